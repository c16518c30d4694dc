"""Soak: a gateway under mixed load for a long time; does anything grow that should not?

    .venv/bin/python bench/soak.py [--minutes 30] [--interval 30] [--json out.json]

Starts a gateway as its own process (SQLite store in a temporary directory) and calls four
functions at steady rates, each from its own thread, one call at a time (a slow answer
slows its thread; nothing piles up):

- ``soak-warm``: a warm WSGI app (the standard library's ``wsgiref`` demo), sync calls;
- ``soak-async``: the same app, async calls (``/async-function``, durable queue);
- ``soak-oneshot``: ``cat`` in a fresh busybox container per call;
- ``soak-cgi``: a CGI shell script in a fresh busybox container per call.

Every ``--interval`` seconds it samples the gateway process (RSS, open file descriptors,
threads), its containers on the engine and its store's size (the SQLite files), and prints
a row. At the end: each measure's slope per minute after the warm-up (the first third, at
most 5 minutes), and a leak verdict that a slow start, a plateau or a passing spike (a
connection open at the moment of a sample) does not fool: a measure leaks if the median of
the second half of the samples after warm-up is above the highest value of the first half
by more than its margin (RSS 8 MiB, 8 fds, 4 threads, 2 containers): a steady climb shows
there. The store grows by design (records are kept): its growth is reported per
call, not judged. Then the load stops, and the warm containers must scale to zero (idle
timeout 15 s). Every call accepted (a sync answer, an async 202) must be accounted for by
a final record: every async one, and a sample of 300 of each other kind.

The images are the base images, no build. Everything it starts carries the gateway's
instance label and is removed at the end. Exit status 1 if it found a leak, an unaccounted
call, a container left after idle or a failed call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx

from _common import free_port, pct

PYTHON = os.environ.get("SWARMLESS_BASE_IMAGE", "swarmless/python:bookworm")
BUSYBOX = "swarmless/busybox:latest"
IDLE_TIMEOUT = 15
#: Margins of the leak verdict: how far the second half's median may pass the first half's
#: highest value.
MARGINS = {"rss_mb": 8.0, "fds": 8, "threads": 4, "containers": 2}
CGI_SCRIPT = 'printf "Content-Type: text/plain\\r\\n\\r\\n"; cat'
#: Calls per second of each kind (the defaults).
RATES = {"warm": 6.0, "async": 2.0, "oneshot": 1.0, "cgi": 1.0}
FINAL = ("succeeded", "failed", "timeout", "dead", "cancelled")


@dataclass
class Sample:
    t: float
    rss_mb: float
    fds: int
    threads: int
    containers: int
    store_mb: float
    calls: int


@dataclass
class Load:
    """What one kind of call did: ids accepted, outcomes, latencies."""

    kind: str
    accepted: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class GatewayProcess:
    """``swarmless up`` with its own data dir, network and instance."""

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self.network = f"swarmless-{instance}"
        self.data = Path(tempfile.mkdtemp(prefix=f"swarmless-{instance}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "SWARMLESS_DATA_DIR": str(self.data),
            "SWARMLESS_INSTANCE": self.instance,
            "SWARMLESS_NETWORK": self.network,
            "SWARMLESS_PORT": str(self.port),
        }
        log = open(self.data / "gateway.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swarmless", "up", "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"gateway did not start; see {self.data / 'gateway.log'}")
            time.sleep(0.1)

    @property
    def token(self) -> str:
        return (self.data / "token").read_text().strip()

    def stop(self, engine: docker.DockerClient) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for c in self.containers(engine):
            with contextlib.suppress(docker.errors.DockerException):
                engine.api.remove_container(c, force=True)
        with contextlib.suppress(docker.errors.DockerException):
            engine.networks.get(self.network).remove()

    def containers(self, engine: docker.DockerClient) -> list[str]:
        flt = {"label": f"swarmless.gateway={self.instance}"}
        return [c["Id"] for c in engine.api.containers(all=True, filters=flt)]

    def sample(self, engine: docker.DockerClient, t: float, calls: int) -> Sample:
        assert self.proc is not None
        proc = Path(f"/proc/{self.proc.pid}")
        status = dict(
            line.split(":", 1) for line in (proc / "status").read_text().splitlines() if ":" in line
        )
        store = sum(p.stat().st_size for p in self.data.glob("swarmless.db*") if p.is_file())
        return Sample(
            t=round(t, 1),
            rss_mb=round(int(status["VmRSS"].split()[0]) / 1024, 2),
            fds=len(os.listdir(proc / "fd")),
            threads=int(status["Threads"]),
            containers=len(self.containers(engine)),
            store_mb=round(store / 2**20, 3),
            calls=calls,
        )


def deploy(http: httpx.Client) -> None:
    warm = {
        "image": PYTHON,
        "mode": "warm",
        "handler_kind": "wsgi",
        "handler": "wsgiref.simple_server:demo_app",
        "concurrency": 4,
        "max_containers": 2,
        "idle_timeout": IDLE_TIMEOUT,
    }
    specs = [
        {"name": "soak-warm", **warm},
        {"name": "soak-async", **warm, "retries": 2},
        {"name": "soak-oneshot", "image": BUSYBOX, "command": ["cat"], "max_containers": 4},
        {
            "name": "soak-cgi",
            "image": BUSYBOX,
            "mode": "cgi",
            "command": ["sh", "-c", CGI_SCRIPT],
            "max_containers": 4,
        },
    ]
    for spec in specs:
        r = http.post("/system/functions", json=spec)
        if r.status_code not in (200, 201):
            raise SystemExit(f"deploy {spec['name']}: {r.status_code} {r.text}")


def drive(url: str, load: Load, rate: float, end: float, stop: threading.Event) -> None:
    """Calls of one kind at ``rate`` per second until ``end`` (monotonic) or ``stop``."""
    path = {
        "warm": "/function/soak-warm",
        "async": "/async-function/soak-async",
        "oneshot": "/function/soak-oneshot",
        "cgi": "/function/soak-cgi",
    }[load.kind]
    expected = 202 if load.kind == "async" else 200
    with httpx.Client(base_url=url, timeout=60) as http:
        t0 = time.monotonic()
        i = 0
        while not stop.is_set() and time.monotonic() < end:
            i = max(i + 1, int((time.monotonic() - t0) * rate))
            stop.wait(max(t0 + i / rate - time.monotonic(), 0))
            start = time.perf_counter()
            try:
                r = http.post(path, content=f"soak {i}".encode())
            except httpx.HTTPError as e:
                load.outcomes["transport error"] += 1
                load.failures.append(f"{load.kind}: {e!r}")
                continue
            load.latencies.append(time.perf_counter() - start)
            if r.status_code == expected:
                load.outcomes["ok"] += 1
                load.accepted.append(r.headers["x-call-id"])
            else:
                load.outcomes[str(r.status_code)] += 1
                load.failures.append(f"{load.kind}: {r.status_code} {r.text[:200]}")
                if "x-call-id" in r.headers:
                    load.accepted.append(r.headers["x-call-id"])


def slope_per_minute(samples: list[Sample], key: str) -> float:
    """Least-squares slope of ``key`` over time, per minute."""
    if len(samples) < 2:
        return 0.0
    xs = [s.t / 60 for s in samples]
    ys = [float(getattr(s, key)) for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def verdict(samples: list[Sample], warmup: float) -> dict[str, dict[str, Any]]:
    """Per measure: slope after warm-up, the first half's max, the second half's median
    and max, and whether it grew past its margin (the second half's median over the
    first half's max: a steady climb shows there, a lone spike does not)."""
    steady = [s for s in samples if s.t >= warmup]
    half = len(steady) // 2
    first, second = steady[:half], steady[half:]
    out: dict[str, dict[str, Any]] = {}
    for key in (*MARGINS, "store_mb"):
        row: dict[str, Any] = {
            "first": getattr(samples[0], key),
            "last": getattr(samples[-1], key),
            "slope_per_min": round(slope_per_minute(steady, key), 4),
        }
        if first and second:
            row["first_half_max"] = max(getattr(s, key) for s in first)
            row["second_half_max"] = max(getattr(s, key) for s in second)
            row["second_half_median"] = statistics.median(getattr(s, key) for s in second)
            if key in MARGINS:
                grown = row["second_half_median"] - row["first_half_max"]
                row["leak"] = grown > MARGINS[key]
        out[key] = row
    return out


def account(http: httpx.Client, loads: dict[str, Load], deadline: float) -> dict[str, Any]:
    """Whether every accepted call has a final record: every async call (they finish on
    their own), a random sample of 300 of each other kind."""
    out: dict[str, Any] = {}
    for kind, load in loads.items():
        ids = (
            load.accepted
            if kind == "async"
            else random.sample(load.accepted, min(300, len(load.accepted)))
        )
        missing: list[str] = []
        statuses: Counter[str] = Counter()
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            for call_id in list(pending):
                r = http.get(f"/invocations/{call_id}")
                if r.status_code == 200 and r.json()["status"] in FINAL:
                    statuses[r.json()["status"]] += 1
                    pending.discard(call_id)
            if pending:
                time.sleep(1)
        missing = sorted(pending)
        out[kind] = {
            "accepted": len(load.accepted),
            "checked": len(ids),
            "final": dict(statuses),
            "unaccounted": missing[:20],
            "unaccounted_count": len(missing),
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    ap.add_argument("--json", type=Path, help="write the samples and the verdict here")
    ap.add_argument("--instance", default=f"soak-{os.getpid()}")
    for kind, rate in RATES.items():
        ap.add_argument(f"--{kind}-rate", type=float, default=rate, help="calls per second")
    args = ap.parse_args()
    duration = args.minutes * 60
    warmup = min(300.0, duration / 3)
    rates = {kind: getattr(args, f"{kind}_rate") for kind in RATES}

    engine = docker.from_env()
    gateway = GatewayProcess(args.instance)
    samples: list[Sample] = []
    loads = {kind: Load(kind) for kind in RATES}
    stop = threading.Event()
    report: dict[str, Any] = {"minutes": args.minutes, "interval": args.interval, "rates": rates}
    try:
        gateway.start()
        http = httpx.Client(
            base_url=gateway.url, headers={"Authorization": f"Bearer {gateway.token}"}, timeout=60
        )
        deploy(http)
        print(
            f"soak: {args.minutes:g} min, sample every {args.interval:g}s, warm-up "
            f"{warmup:g}s; calls/s: " + ", ".join(f"{k} {v:g}" for k, v in rates.items())
        )
        print(f"{'t (s)':>7} {'RSS MB':>8} {'fds':>5} {'thr':>5} {'ctr':>4} {'store MB':>9} calls")
        t0 = time.monotonic()
        end = t0 + duration
        threads = [
            threading.Thread(target=drive, args=(gateway.url, loads[k], rates[k], end, stop))
            for k in RATES
            if rates[k] > 0
        ]
        for t in threads:
            t.start()
        next_at = t0
        while True:
            calls = sum(sum(load.outcomes.values()) for load in loads.values())
            s = gateway.sample(engine, time.monotonic() - t0, calls)
            samples.append(s)
            print(
                f"{s.t:7.0f} {s.rss_mb:8.1f} {s.fds:5d} {s.threads:5d} {s.containers:4d} "
                f"{s.store_mb:9.2f} {s.calls}",
                flush=True,
            )
            if time.monotonic() >= end:
                break
            next_at += args.interval
            stop.wait(max(min(next_at, end) - time.monotonic(), 0))
        stop.set()
        for t in threads:
            t.join(90)

        # Idle: the warm containers go (idle timeout); every accepted call has its record.
        idle_deadline = time.monotonic() + IDLE_TIMEOUT + 90
        while gateway.containers(engine) and time.monotonic() < idle_deadline:
            time.sleep(1)
        left = len(gateway.containers(engine))
        after = gateway.sample(engine, time.monotonic() - t0, samples[-1].calls)
        accounting = account(http, loads, time.monotonic() + 120)
        http.close()
    finally:
        stop.set()
        gateway.stop(engine)

    judged = verdict(samples, warmup)
    total = sum(len(load.accepted) for load in loads.values())
    store_growth = samples[-1].store_mb - samples[0].store_mb
    print(
        f"\nafter idle: {left} container(s); RSS {after.rss_mb:.1f} MB, fds {after.fds}, "
        f"threads {after.threads}"
    )
    print(
        f"{'measure':>10} {'first':>9} {'last':>9} {'slope/min':>10} {'1st max':>9} "
        f"{'2nd median':>10}  verdict"
    )
    for key, row in judged.items():
        leak = {True: "GROWS", False: "flat", None: "(not judged)"}[row.get("leak")]
        print(
            f"{key:>10} {row['first']:9} {row['last']:9} {row['slope_per_min']:10.3f} "
            f"{row.get('first_half_max', '-'):>9} {row.get('second_half_median', '-'):>10}  {leak}"
        )
    if total:
        print(
            f"store: +{store_growth * 1024:.0f} KiB over {total} calls "
            f"({store_growth * 2**20 / total:.0f} bytes per call)"
        )
    for kind, load in loads.items():
        lat = [x * 1000 for x in load.latencies]
        acc = accounting[kind]
        p = f"p50 {pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms" if lat else "no calls"
        print(
            f"{kind:>8}: {sum(load.outcomes.values())} calls {dict(load.outcomes)}, {p}; "
            f"accounted {acc['checked'] - acc['unaccounted_count']}/{acc['checked']} checked "
            f"of {acc['accepted']} accepted"
        )
    failures = [f for load in loads.values() for f in load.failures]
    for f in failures[:10]:
        print(f"  failure: {f}")
    leaks = [k for k, row in judged.items() if row.get("leak")]
    unaccounted = sum(a["unaccounted_count"] for a in accounting.values())
    ok = not leaks and not left and not unaccounted and not failures
    report.update(
        samples=[asdict(s) for s in samples],
        after_idle=asdict(after),
        containers_after_idle=left,
        verdict=judged,
        leaks=leaks,
        accounting=accounting,
        outcomes={k: dict(v.outcomes) for k, v in loads.items()},
        latency_ms={
            k: {
                "p50": pct([x * 1000 for x in v.latencies], 50),
                "p99": pct([x * 1000 for x in v.latencies], 99),
            }
            for k, v in loads.items()
            if v.latencies
        },
        failures=failures[:50],
        store_bytes_per_call=round(store_growth * 2**20 / total) if total else None,
        ok=ok,
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(
        "OK: nothing grew, nothing was lost"
        if ok
        else f"NOT OK: leaks {leaks}, "
        f"{left} container(s) left, {unaccounted} unaccounted, {len(failures)} failed"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
