"""Gateway replicas on PostgreSQL: warm-call throughput through two replicas vs one, and
how long calls stop when the active replica is killed.

    .venv/bin/python bench/replicas.py [--duration 5] [--reps 3] [--connections 16]

Every gateway is a ``swarmless up`` process on PostgreSQL (scripts/postgres.sh) with the
same warm no-op function (4 containers pinned, concurrency 4):

- ``one``: a single gateway, all the load sent to it (the baseline, measured in this run);
- ``two``: two replicas of another gateway (one active, one standby), the load split evenly
  between them: the standby forwards its half to the active one.

ratio = requests/s of ``two`` / requests/s of ``one`` (medians of interleaved runs). The
replicas are for availability: one of them dispatches, so the ratio is about 1 at best
(the forwarding hop costs CPU on the same 2 cores). Then the active replica is SIGKILLed
and a client calling the standby every 20 ms reports how long calls failed (the lease's
time to live, 3 s here, plus the new active replica's start), and a clean stop's handover.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import docker
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers
from bench.gateway_processes import (
    BODY,
    HANDLER,
    WRK_SCRIPT,
    Load,
    python_load,
    wrk_load,
)
from tests.gateway_harness import GatewayProcess
from tests.postgres_harness import cluster_url, database

TOKEN = "bench-replicas-token"


def role(replica: GatewayProcess) -> str:
    with contextlib.suppress(httpx.HTTPError):
        return str(httpx.get(f"{replica.url}/healthz", timeout=2).json().get("role"))
    return "down"


def replica(data: Path, instance: str, store: str) -> GatewayProcess:
    """A ``swarmless up`` process on ``store`` (not started)."""
    data.mkdir(parents=True, exist_ok=True)
    env = {"SWARMLESS_STORE_URL": store, "SWARMLESS_TOKEN": TOKEN, "SWARMLESS_LEASE_TTL": "3"}
    return GatewayProcess(data, instance, f"swarmless-{instance}", _port(), env)


def build(engine: docker.DockerClient, tmp: Path, run_id: str) -> str:
    from swarmless.build import build_function

    folder = tmp / "noop"
    folder.mkdir()
    (folder / "handler.py").write_text(HANDLER)
    tag = f"swarmless-bench/replicas-noop:{run_id}"
    build_function(
        folder,
        tag=tag,
        mode="warm",
        client=engine,
        base_image=os.environ.get("SWARMLESS_BASE_IMAGE", "swarmless/python:bookworm"),
        labels={"swarmless.bench": run_id},
        function="noop",
    )
    return tag


def split_load(
    urls: list[str], connections: int, duration: float, args: argparse.Namespace
) -> Load:
    """The same total load, its connections spread over ``urls``, run at once."""
    results: list[Load] = []
    lock = threading.Lock()

    def one(url: str, c: int) -> None:
        if args.loadgen == "wrk":
            got = wrk_load(url + "/function/noop", c, duration, args.tmp / "post.lua")
        else:
            got = python_load(url + "/function/noop", c, duration)
        with lock:
            results.append(got)

    share = max(1, connections // len(urls))
    threads = [threading.Thread(target=one, args=(u, share)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Load(
        rps=sum(r.rps for r in results),
        p50=statistics.median(r.p50 for r in results),
        p99=max(r.p99 for r in results),
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
    )


def deploy(url: str, image: str, n: int) -> None:
    spec = {
        "name": "noop",
        "image": image,
        "mode": "warm",
        "handler": "handler:handle",
        "min_containers": n,
        "max_containers": n,
        "concurrency": 4,
    }
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(f"{url}/system/functions", json=spec, headers=headers, timeout=60)
    if r.status_code not in (200, 201):
        raise SystemExit(f"deploy failed: {r.status_code} {r.text}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if httpx.post(f"{url}/function/noop", content=BODY, timeout=30).status_code == 200:
            return
        time.sleep(0.2)
    raise SystemExit("the function never answered")


def outage(standby: GatewayProcess, kill: Callable[[], None]) -> tuple[float, float, int]:
    """After ``kill()``: until when calls through ``standby`` failed or stalled (seconds),
    the longest call, and how many failed. A request the standby could not deliver waits
    for the next active replica instead of failing, so the gap shows as a slow call."""
    kill()
    t0 = time.monotonic()
    longest, failed, last_bad = 0.0, 0, 0.0
    with httpx.Client(timeout=60) as c:
        while time.monotonic() - t0 < 60:
            t1 = time.monotonic()
            try:
                ok = c.post(f"{standby.url}/function/noop", content=BODY).status_code == 200
            except httpx.HTTPError:
                ok = False
            now = time.monotonic()
            longest = max(longest, now - t1)
            if not ok or now - t1 > 0.5:
                failed += not ok
                last_bad = now - t0
            elif now - t0 > last_bad + 2.0:  # two seconds of quick successes: resumed
                return last_bad, longest, failed
            time.sleep(0.02)
    return float("nan"), longest, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--containers", type=int, default=4)
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    args = parser.parse_args()
    if not (0 < args.duration <= 60 and 0 < args.reps <= 20 and 0 < args.connections <= 256):
        parser.error("--duration 1..60, --reps 1..20, --connections 1..256")
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "python"
    run_id = uuid.uuid4().hex[:8]
    args.tmp = Path(tempfile.mkdtemp(prefix="swarmless-bench-replicas-"))
    (args.tmp / "post.lua").write_text(WRK_SCRIPT % BODY.decode())
    engine = docker.from_env()
    try:
        base = cluster_url()
    except RuntimeError as e:
        raise SystemExit(str(e)) from None
    one_instance, two_instance = f"bench-one-{run_id}", f"bench-two-{run_id}"
    replicas: list[GatewayProcess] = []
    image = build(engine, args.tmp, run_id)
    print(
        f"bench/replicas.py run {run_id}: {os.cpu_count()} CPUs, load {args.loadgen}, "
        f"{args.connections} connections, {args.duration:g} s x {args.reps} runs; "
        f"warm no-op, {args.containers} containers x concurrency 4, store PostgreSQL"
    )
    try:
        with (
            database(base, f"bench_one_{run_id}") as one_db,
            database(base, f"bench_two_{run_id}") as two_db,
        ):
            one = replica(args.tmp / "one", one_instance, one_db)
            a = replica(args.tmp / "a", two_instance, two_db)
            b = replica(args.tmp / "b", two_instance, two_db)
            replicas += [one, a, b]
            for r in replicas:
                r.start()
            assert (role(a), role(b)) == ("active", "standby"), (role(a), role(b))
            deploy(one.url, image, args.containers)
            deploy(b.url, image, args.containers)
            runs: dict[str, list[Load]] = {"one": [], "two": []}
            split_load([one.url], args.connections, 1, args)  # warm-up
            split_load([a.url, b.url], args.connections, 1, args)
            for _ in range(args.reps):
                runs["one"].append(split_load([one.url], args.connections, args.duration, args))
                runs["two"].append(
                    split_load([a.url, b.url], args.connections, args.duration, args)
                )
            one.stop()
            med = {k: statistics.median(x.rps for x in v) for k, v in runs.items()}
            for k, v in runs.items():
                p50 = statistics.median(x.p50 for x in v) * 1000
                errors = sum(x.errors for x in v)
                print(f"  {k}: {med[k]:8.0f} req/s  p50 {p50:.2f} ms  errors {errors}")
            print(f"throughput, two replicas vs one: ratio {med['two'] / med['one']:.2f}x")

            def handover() -> None:
                a.start()  # the killed one, back as a standby
                b.stop()

            for what, standby, kill in (
                ("SIGKILLed", b, a.kill),
                ("stopped cleanly", a, handover),
            ):
                gap, longest, failed = outage(standby, kill)
                print(
                    f"active replica {what}: calls through the standby back to normal after "
                    f"{gap:.1f} s (longest call {longest:.1f} s, {failed} failed)"
                )
    finally:
        for r in replicas:
            r.stop()
        for instance in (one_instance, two_instance):
            for c in engine.api.containers(
                all=True, filters={"label": f"swarmless.gateway={instance}"}
            ):
                with contextlib.suppress(docker.errors.DockerException):
                    engine.api.remove_container(c["Id"], force=True)
            with contextlib.suppress(docker.errors.DockerException):
                engine.networks.get(f"swarmless-{instance}").remove()
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(image, force=True)
        shutil.rmtree(args.tmp, ignore_errors=True)


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
