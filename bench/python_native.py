"""Python-native functions: decorate-to-first-result on a warm pool, and map throughput.

    .venv/bin/python bench/python_native.py [--fresh 15] [--inputs 100000]

1. With the app's generic pool warm (``min_containers`` up), a *new* function is
   decorated and called: the time from the decorator to its first result (the code is
   pickled, sent, loaded into a waiting interpreter, run). Target: median <= 0.3 s; Modal
   documents cold starts of about 1 s. Printed as ratios to both.
2. ``map`` over 100,000 tiny inputs (``x * x``) through the gateway and its containers
   versus a local ``concurrent.futures.ProcessPoolExecutor`` doing the same work with as
   many processes as the pool has containers, with its default ``chunksize=1`` and with a
   tuned ``chunksize``. Target: ours >= 0.5x the executor's throughput.

A gateway process of its own is started and everything it made is removed at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import time

import docker

from _common import gateway  # type: ignore[import-not-found]
from swarmless.config import Settings
from swarmless.native import App


def square(x: int) -> int:
    return x * x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fresh", type=int, default=15, help="new functions to time")
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--containers", type=int, default=2)
    args = parser.parse_args()
    engine = docker.from_env()
    n = args.containers
    with gateway(engine, "native") as gw:
        settings = Settings.load(gateway_url=gw.url, token=gw.token)
        app = App("bench", settings=settings, min_containers=n, max_containers=n, timeout=120)
        with app.run():
            # Warm: the pool deployed, its containers up and each having served a call.
            warm = app.function()(square)
            t0 = time.perf_counter()
            assert warm.remote(3) == 9
            first_ever = time.perf_counter() - t0
            assert list(warm.map(range(64), max_concurrency=n)) == [x * x for x in range(64)]

            samples = []
            for i in range(args.fresh):
                t0 = time.perf_counter()

                @app.function()
                def fresh(x: int, k: int = i) -> int:  # new code every round (k differs)
                    return x + k

                assert fresh.remote(1) == 1 + i
                samples.append(time.perf_counter() - t0)
            med = statistics.median(samples)
            print(f"first call ever (image check, deploy, container start): {first_ever:.2f} s")
            print(
                f"decorate -> first result, new function, warm pool: median {med * 1000:.1f} ms, "
                f"max {max(samples) * 1000:.1f} ms over {args.fresh}"
            )
            print(f"  ratio to the 0.3 s target: {med / 0.3:.3f} (<= 1 meets it)")
            print(f"  ratio to Modal's documented ~1 s cold start: {med / 1.0:.3f}")

            inputs = range(args.inputs)
            t0 = time.perf_counter()
            ours = list(warm.map(inputs))
            t_ours = time.perf_counter() - t0
            assert ours == [x * x for x in inputs]
            records = app.gateway.invocations(function=app.pool_name(warm), limit=1000)
            calls = len(app.runner.run(records))

    results = {}
    for chunksize in (1, 1000):
        with concurrent.futures.ProcessPoolExecutor(max_workers=n) as pool:
            list(pool.map(square, range(n * 4)))  # processes started before timing
            t0 = time.perf_counter()
            theirs = list(pool.map(square, inputs, chunksize=chunksize))
            results[chunksize] = time.perf_counter() - t0
        assert theirs == ours
    print(
        f"map over {args.inputs} tiny inputs: swarmless {t_ours:.2f} s "
        f"({args.inputs / t_ours:,.0f}/s, {calls} gateway calls in the pool's records)"
    )
    for chunksize, seconds in results.items():
        print(
            f"  ProcessPoolExecutor({n} workers, chunksize={chunksize}): {seconds:.2f} s "
            f"({args.inputs / seconds:,.0f}/s); throughput ratio swarmless/executor: "
            f"{seconds / t_ours:.2f} (target >= 0.5)"
        )


if __name__ == "__main__":
    main()
