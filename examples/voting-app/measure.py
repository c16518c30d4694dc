"""cgi vs warm, measured: the same front ends, the same requests, both modes in one run.

    .venv/bin/python examples/voting-app/measure.py [--requests 40] [--clients 4] [--seconds 10]

Self-contained: builds the images if missing (cached by tag), starts its own PostgreSQL and
gateway (objects named ``swarmless-vote-bench*``, all removed at the end; the images stay),
deploys the app in ``cgi`` mode (the baseline: one fresh container per request, the 2016
design), measures, redeploys in ``warm`` mode and measures the same:

- sequential latency (p50, p95) of ``GET /function/vote/`` (the ballot),
  ``POST /function/vote/`` (a vote, queued for record-vote) and
  ``GET /function/result/data.json`` (the counts, read from PostgreSQL);
- throughput of the ballot with ``--clients`` concurrent clients for ``--seconds``;
- warm only: the first request after a scale to zero (a cold start).

Prints a table and the warm/cgi ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from swarmless.config import Settings
from swarmless.engine import connect
from swarmless.sdk.gateway import GatewayClient

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import votingapp as app  # noqa: E402

NAMES = app.Names("swarmless-vote-bench")
#: On everything this run makes, and what its teardown goes by: unique to the run, so that
#: it never removes another run's (or anyone's) objects.
LABELS = {"swarmless.bench": f"voting-app-{uuid.uuid4().hex[:8]}"}


def sequential(http: httpx.Client, method: str, path: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        data = {"vote": "ab"[i % 2]} if method == "POST" else None
        t0 = time.perf_counter()
        http.request(method, path, data=data).raise_for_status()
        out.append(time.perf_counter() - t0)
    return out


def throughput(url: str, path: str, clients: int, seconds: float) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < stop:
                http.get(path).raise_for_status()
                done[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.monotonic() - t0)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)] * 1000


def measure(url: str, gw: GatewayClient, mode: str, args: argparse.Namespace) -> dict[str, float]:
    out: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=60) as http:
        if mode == "warm":  # scaled to zero after the deploy: the next call is a cold start
            gw.scale("vote", 0)
            while app.container_count(gw.function("vote")["containers"], "warm"):
                time.sleep(0.2)
            gw.scale("vote", None)
            t0 = time.perf_counter()
            http.get("/function/vote/").raise_for_status()
            out["cold start (first GET /vote/)"] = (time.perf_counter() - t0) * 1000
        for method, path in (
            ("GET", "/function/vote/"),
            ("POST", "/function/vote/"),
            ("GET", "/function/result/data.json"),
        ):
            sequential(http, method, path, 3)  # warm-up (and the first warm containers)
            lat = sequential(http, method, path, args.requests)
            out[f"{method} {path[9:]} p50 ms"] = pct(lat, 0.5)
            out[f"{method} {path[9:]} p95 ms"] = pct(lat, 0.95)
    rps = throughput(url, "/function/vote/", args.clients, args.seconds)
    out[f"GET /vote/ req/s ({args.clients} clients)"] = rps
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args(argv)
    engine = connect()
    results: dict[str, dict[str, float]] = {}
    try:
        print("images ...", flush=True)
        images = app.build_images(engine, say=print)
        app.ensure_network(engine, NAMES.network, LABELS)
        db = app.start_database(
            engine,
            image=images.postgres,
            names=NAMES,
            password="bench",
            labels=LABELS,
            args=("-c", "fsync=off"),
        )
        with (
            tempfile.TemporaryDirectory(prefix="swarmless-vote-bench-") as tmp,
            app.background_gateway(Path(tmp), NAMES, labels=LABELS) as (url, token, _),
        ):
            gw = GatewayClient(Settings.load(gateway_url=url, token=token), timeout=120)
            for mode in ("cgi", "warm"):
                app.deploy(gw, app.specs(images, db, mode=mode, max_containers=args.clients))
                print(f"measuring {mode} ...", flush=True)
                results[mode] = measure(url, gw, mode, args)
            gw.close()
    finally:
        app.remove_all(engine, NAMES, proof=LABELS)
        engine.close()
    cgi, warm = results["cgi"], results["warm"]
    print(f"\n{'':44} {'cgi':>9} {'warm':>9}  warm vs cgi")
    for key in warm:
        base = cgi.get(key)
        if base is None:
            print(f"{key:44} {'':>9} {warm[key]:9.1f}")
            continue
        ratio = warm[key] / base if base else float("nan")
        better = 1 / ratio if "ms" in key else ratio
        print(f"{key:44} {base:9.1f} {warm[key]:9.1f}  {better:5.1f}x better")
    med = statistics.median
    print(
        f"\nwarm answers in {med([warm[k] for k in warm if 'p50' in k]):.0f} ms at the median "
        f"of the three p50s, cgi in {med([cgi[k] for k in cgi if 'p50' in k]):.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
