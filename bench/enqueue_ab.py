"""The async intake, A against B: gateways of different code or event loops, rounds interleaved.

    .venv/bin/python bench/enqueue_ab.py VARIANT [VARIANT ...] [--rounds 3] [--seconds 5]
                                         [--connections 32] [--kinds held,run,sync]
                                         [--delay-ms 0] [--instance h1enq]

A VARIANT is ``NAME=SRC`` or ``NAME=SRC:LOOP``: the gateway runs the ``swarmless`` package
found in ``SRC`` (``src`` of this checkout, or of a snapshot: ``git archive HEAD src | tar
-x -C /tmp/base``) and, with ``LOOP`` (``asyncio`` or ``uvloop``), that event loop (for code
whose ``swarmless.gateway.server`` has ``EVENT_LOOP``). Every variant's gateway runs at
the same time (own data dir, network, instance ``INSTANCE-NAME-PID``), each with the
functions of ``bench/async.py``'s enqueue rounds: ``noop`` (4 warm containers, calls run as
they come) and ``hold`` (one container kept busy: calls wait in the queue). Each round
measures, for each variant in turn (the order rotating from round to round), with
``wrk -t1`` (:mod:`enqueue_load`):

- ``held``: async calls accepted (202) per second, the intake alone;
- ``run``: the same while the 4 warm containers run the calls (the issue's target);
- ``sync``: warm sync calls (``POST /function/noop``, 200s per second) at ``--connections``.

Every 202's id is checked to be a row of the gateway's queue. CPU per call: the gateway
process (and of it, its main thread: the event loop, which one process cannot spread over
cores), its worker containers, the whole machine. Medians per variant and kind are
printed at the end, one line each. Everything started is removed on every exit path.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import httpx

from _common import (
    Gateway,
    build_image,
    check,
    container_cpu,
    exit_on_sigterm,
    host_cpu,
    proc_cpu,
)
from _common import gateway as _common_gateway
from enqueue_load import stored_ids, wrk_enqueue

HANDLER = (
    "import time\n\n\ndef handle(event, context):\n    return b'ok'\n\n\n"
    "def hold(event, context):\n    time.sleep(900)\n    return b'ok'\n"
)
LAUNCH = (
    "import sys\n"
    "loop = sys.argv.pop(1)\n"
    "if loop:\n"
    "    import swarmless.gateway.server as s\n"
    "    s.EVENT_LOOP = loop\n"
    "from swarmless.cli import main\n"
    "main()\n"
)


def spec(name: str, image: str) -> dict[str, Any]:
    if name == "noop":
        return {
            "name": "noop",
            "image": image,
            "mode": "warm",
            "handler": "handler:handle",
            "concurrency": 4,
            "min_containers": 4,
            "max_containers": 4,
            "idle_timeout": 900,
            "queue_size": 100_000,
        }
    return {
        "name": "hold",
        "image": image,
        "mode": "warm",
        "handler": "handler:hold",
        "concurrency": 1,
        "min_containers": 1,
        "max_containers": 1,
        "async_concurrency": 1,
        "timeout": 900,
        "retries": 0,
        "idle_timeout": 900,
        "queue_size": 200_000,
    }


def gateway(
    engine: docker.DockerClient, instance: str, src: str, loop: str
) -> contextlib.AbstractContextManager[Gateway]:
    """:func:`_common.gateway` running the ``swarmless`` package in ``src`` on ``loop``."""
    return _common_gateway(
        engine,
        instance,
        instance=instance,
        env={"PYTHONPATH": src},
        launch=[sys.executable, "-c", LAUNCH, loop],
    )


def main_thread_cpu(pid: int) -> float:
    """CPU seconds of a process's main thread (its event loop; the SQLite writer's thread
    and the others are the rest of :func:`proc_cpu`)."""
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pending(http: httpx.Client) -> bool:
    for status in ("queued", "running"):
        r = http.get("/invocations", params={"function": "noop", "status": status, "limit": 1})
        if r.json():
            return True
    return False


def ready(http: httpx.Client, name: str, n: int) -> None:
    deadline = time.monotonic() + 120
    while http.get(f"/system/functions/{name}").json()["containers"].get("ready", 0) < n:
        check(time.monotonic() < deadline, f"{name}: {n} ready containers not there after 120 s")
        time.sleep(0.2)


def burst(
    engine: docker.DockerClient,
    gw: Gateway,
    http: httpx.Client,
    kind: str,
    args: argparse.Namespace,
    tmp: Path,
) -> dict[str, float]:
    assert gw.data is not None
    db = gw.data / "swarmless.db"
    fn = "hold" if kind == "held" else "noop"
    if kind == "run":
        deadline = time.monotonic() + 300
        while pending(http):
            check(time.monotonic() < deadline, "noop calls still pending after 300 s")
            time.sleep(0.05)
    flt = {"label": f"swarmless.gateway={gw.instance}"}
    cids = [c["Id"] for c in engine.api.containers(filters=flt)]
    before = stored_ids(db, fn) if kind != "sync" else set()
    path = "/function/noop" if kind == "sync" else f"/async-function/{fn}"

    def cpu() -> tuple[float, float, float, float]:
        busy, _ = host_cpu()
        workers = sum(container_cpu(engine, c) for c in cids)
        return busy, proc_cpu(gw.pid), workers, main_thread_cpu(gw.pid)

    c0 = cpu()
    b = wrk_enqueue(gw.url + path, args.connections, args.seconds, tmp, delay_ms=args.delay_ms)
    c1 = cpu()
    if kind == "sync":
        n = b.other.get("200", 0)
        check(b.accepted == 0 and set(b.other) <= {"200"}, b.other)
    else:
        n = b.accepted
        check(not b.other, ("answers other than 202", b.other))
        rows = stored_ids(db, fn)
        lost = set(b.ids) - rows
        check(len(set(b.ids)) == n and not lost, f"{len(lost)} 202s not in the store")
        check(len(rows - before - set(b.ids)) <= args.connections, "rows beyond the 202s")
    check(b.socket_errors == 0, ("socket errors", b.socket_errors))
    n = max(1, n)
    return {
        "rate": n / b.seconds,
        "p50_ms": b.p50_ms,
        "p99_ms": b.p99_ms,
        "machine_us": (c1[0] - c0[0]) / n * 1e6,
        "gateway_us": (c1[1] - c0[1]) / n * 1e6,
        "workers_us": (c1[2] - c0[2]) / n * 1e6,
        "main_us": (c1[3] - c0[3]) / n * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("variants", nargs="+", help="NAME=SRC or NAME=SRC:LOOP")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--kinds", default="held,run,sync")
    parser.add_argument(
        "--delay-ms", type=int, default=0, help="each connection's pause between calls"
    )
    parser.add_argument("--instance", default="h1enq")
    args = parser.parse_args()
    check(0 < args.rounds <= 20 and 0 < args.seconds <= 30, "--rounds 1..20, --seconds 1..30")
    kinds = args.kinds.split(",")
    check(set(kinds) <= {"held", "run", "sync"}, kinds)
    variants: list[tuple[str, str, str]] = []
    for v in args.variants:
        name, _, rest = v.partition("=")
        src, _, loop = rest.partition(":")
        check(bool(name and src) and loop in ("", "asyncio", "uvloop"), v)
        variants.append((name, str(Path(src).resolve()), loop))
    exit_on_sigterm()
    engine = docker.from_env()
    image = f"{args.instance}/noop:latest"
    build_image(engine, image, HANDLER, args.instance)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    try:
        with contextlib.ExitStack() as stack:
            gws: list[tuple[str, Gateway, httpx.Client]] = []
            for name, src, loop in variants:
                gw = stack.enter_context(
                    gateway(engine, f"{args.instance}-{name}-{os.getpid()}", src, loop)
                )
                http = stack.enter_context(
                    httpx.Client(base_url=gw.url, headers=gw.headers, timeout=120)
                )
                for fn in ("noop", "hold"):
                    http.post("/system/functions", json=spec(fn, image)).raise_for_status()
                gws.append((name, gw, http))
            for _, _, http in gws:
                ready(http, "noop", 4)
                ready(http, "hold", 1)
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="h1enq-wrk-")))
            for _, gw, _http in gws:  # warm up: connections, caches
                wrk_enqueue(gw.url + "/function/noop", args.connections, 1, tmp)
            for i in range(args.rounds):
                order = gws[i % len(gws) :] + gws[: i % len(gws)]
                for name, gw, http in order:
                    for kind in kinds:
                        got = burst(engine, gw, http, kind, args, tmp)
                        results.setdefault((name, kind), []).append(got)
                        print(
                            f"round {i + 1} {name:<12} {kind:<4} {got['rate']:7,.0f}/s  p50"
                            f" {got['p50_ms']:5.1f} ms p99 {got['p99_ms']:6.1f} ms  CPU us/call"
                            f" gateway {got['gateway_us']:4.0f} (loop {got['main_us']:4.0f})"
                            f" workers {got['workers_us']:4.0f}"
                            f" machine {got['machine_us']:4.0f}  load {os.getloadavg()[0]:.2f}",
                            flush=True,
                        )
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(image, force=True)
    pause = f", {args.delay_ms} ms between a connection's calls" if args.delay_ms else ""
    print(
        f"medians of {args.rounds} rounds, wrk -t1 -c{args.connections} {args.seconds:g} s{pause}:"
    )
    for kind in kinds:
        for name, _, _ in variants:
            rs = results[(name, kind)]
            m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            rates = ", ".join(f"{r['rate']:,.0f}" for r in rs)
            print(
                f"  {kind:<4} {name:<12} {m['rate']:7,.0f}/s ({rates})  CPU us/call gateway"
                f" {m['gateway_us']:.0f} (its loop's thread {m['main_us']:.0f}) workers"
                f" {m['workers_us']:.0f} machine"
                f" {m['machine_us']:.0f}"
            )


if __name__ == "__main__":
    main()
