"""The store's file under a steady load, with and without retention.

    .venv/bin/python bench/retention.py [--seconds 60] [--rate 100]

Starts a gateway as its own process twice (SQLite store in a temporary directory), each
time with a warm function that prints a line per call (so every call leaves a record and
its logs), and sends ``--rate`` sync calls a second for ``--seconds``, sampling the size of
the store's files (database and WAL) every 5 s:

- kept: the default retention (100,000 records: nothing is swept in a short run);
- swept: 500 records and 250 logs kept, swept every 2 s (the run's first few seconds
  reach that count, so its second half shows the steady state, not the filling).

Prints both series and the growth over the second half of each run, in MiB a minute;
target: with retention the file stops growing (second-half growth <= 10 % of without).
Everything it starts carries ``swarmless.bench=retention`` and is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import docker
import httpx

from _common import build_image, gateway, target

IMAGE = "swarmless-bench/retention-echo:latest"
HANDLER = (
    "def handle(event, context):\n    print('call', context.call_id, 'x' * 200)\n    return b'ok'\n"
)
SAMPLE = 5.0
SWEPT = {
    "SWARMLESS_RETENTION_RECORDS_COUNT": "500",
    "SWARMLESS_RETENTION_LOGS_COUNT": "250",
    "SWARMLESS_RETENTION_INTERVAL": "2",
}


def size(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return sum(p.stat().st_size for p in (db, wal) if p.exists())


def load(url: str, headers: dict[str, str], rate: float, seconds: float, done: list[int]) -> None:
    """``rate`` calls a second from one thread, paced, for ``seconds``."""
    with httpx.Client(headers=headers, timeout=30) as c:
        start = time.monotonic()
        n = 0
        while (now := time.monotonic()) - start < seconds:
            due = start + n / rate
            if due > now:
                time.sleep(due - now)  # pacing, not synchronisation
            if c.post(url).status_code == 200:
                done[0] += 1
            n += 1


def run(
    engine: docker.DockerClient, name: str, env: dict[str, str], args: argparse.Namespace
) -> list[int]:
    folder = Path(tempfile.mkdtemp(prefix=f"swarmless-bench-retention-{name}-"))
    db = folder / "swarmless.db"
    saved = {k: os.environ.get(k) for k in [*env, "SWARMLESS_STORE_URL"]}
    os.environ.update(env | {"SWARMLESS_STORE_URL": f"sqlite:///{db}"})
    try:
        with gateway(engine, f"retention-{name}") as gw:
            spec = {"name": "echo", "image": IMAGE, "mode": "warm", "handler": "handler:handle",
                    "min_containers": 2}  # fmt: skip
            r = httpx.post(f"{gw.url}/system/functions", json=spec, headers=gw.headers, timeout=60)
            r.raise_for_status()
            url = f"{gw.url}/function/echo"
            httpx.post(url, headers=gw.headers, timeout=60).raise_for_status()
            done = [0]
            threads = [
                threading.Thread(
                    target=load, args=(url, gw.headers, args.rate / 2, args.seconds, done)
                )
                for _ in range(2)
            ]
            for t in threads:
                t.start()
            sizes = []
            start = time.monotonic()
            while any(t.is_alive() for t in threads):
                sizes.append(size(db))
                for t in threads:
                    t.join(max(0.0, start + len(sizes) * SAMPLE - time.monotonic()))
            sizes.append(size(db))
            print(f"{name}: {done[0]} calls in {time.monotonic() - start:.0f} s")
            return sizes
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def growth(sizes: list[int]) -> float:
    """MiB a minute over the second half of a series sampled every SAMPLE seconds."""
    half = len(sizes) // 2
    minutes = (len(sizes) - 1 - half) * SAMPLE / 60
    return (sizes[-1] - sizes[half]) / 2**20 / minutes if minutes > 0 else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--rate", type=float, default=100)
    args = p.parse_args()
    engine = docker.from_env()
    build_image(engine, IMAGE, HANDLER, "retention")
    try:
        kept = run(engine, "kept", {}, args)
        swept = run(engine, "swept", SWEPT, args)
    finally:
        engine.images.remove(IMAGE, force=True)
    mib = lambda s: " ".join(f"{x / 2**20:.1f}" for x in s)  # noqa: E731
    print(f"store MiB every {SAMPLE:g} s, kept:  {mib(kept)}")
    print(f"store MiB every {SAMPLE:g} s, swept: {mib(swept)}")
    g_kept, g_swept = growth(kept), growth(swept)
    ratio = g_swept / g_kept if g_kept > 0 else float("nan")
    print(
        f"growth over the second half: {g_kept:.2f} MiB/min without retention, "
        f"{g_swept:.2f} MiB/min with it"
    )
    target("retention_growth", ratio, "<=", 0.10)


if __name__ == "__main__":
    main()
