"""Async invocations: enqueue rate, enqueue-to-start delay, async drain vs sync drain.

    .venv/bin/python bench/async.py [--calls 2000] [--clients 64]

Starts a gateway as its own process (SQLite store in a temporary directory), deploys a
warm no-op function with its containers kept ready, and measures over loopback:

- enqueue rate: async calls accepted (durable, 202) per second, ``--clients`` at once;
  target >= 1,000/s on SQLite;
- enqueue-to-start delay with a free warm container (calls sent one at a time): p50 and p99
  of ``started_at - queued_at`` from the records; target p50 <= 10 ms;
- drain time of ``--calls`` no-op async calls (first accepted to last finished) vs the same
  number of sync calls over the same warm containers; target ratio <= 1.3.

Everything it starts carries ``swarmless.bench=async`` and is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import statistics
import threading
import time
import urllib.parse

import docker
import httpx

from _common import build_image, gateway, pct

IMAGE = "swarmless-bench/async-noop:latest"
HANDLER = "def handle(event, context):\n    return b'ok'\n"


@dataclasses.dataclass
class Answer:
    status_code: int
    headers: dict[str, str]


def _fire(url: str, path: str, n: int, clients: int) -> list[Answer]:
    """``n`` POSTs from ``clients`` threads, each with its own keep-alive connection.

    (httpx's async pool is the bottleneck at 64 connections: ~150 req/s here.)
    """
    parts = urllib.parse.urlsplit(url)
    local = threading.local()
    next_i = iter(range(n))
    lock = threading.Lock()
    answers: list[Answer | None] = [None] * n

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=120)
        while True:
            with lock:
                i = next(next_i, None)
            if i is None:
                break
            conn.request("POST", path, body=str(i).encode())
            r = conn.getresponse()
            r.read()
            answers[i] = Answer(r.status, {k.lower(): v for k, v in r.getheaders()})
        conn.close()
        local.done = True

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return [a for a in answers if a is not None]


async def fire(http: httpx.AsyncClient, path: str, n: int, clients: int) -> list[Answer]:
    return await asyncio.to_thread(_fire, str(http.base_url).rstrip("/"), path, n, clients)


async def records(
    http: httpx.AsyncClient, ids: set[str], timeout: float
) -> list[dict[str, object]]:
    """Poll until every call in ``ids`` is final; their records."""
    deadline = time.monotonic() + timeout
    while True:
        rows = (await http.get("/invocations", params={"function": "noop", "limit": 10000})).json()
        mine = [r for r in rows if r["id"] in ids]
        if len(mine) == len(ids) and all(r["status"] in ("succeeded", "dead") for r in mine):
            return mine
        if time.monotonic() > deadline:
            raise SystemExit(f"calls not final after {timeout}s")
        await asyncio.sleep(0.2)


async def measure(url: str, token: str, calls: int, clients: int) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as http:
        spec = {
            "name": "noop",
            "image": IMAGE,
            "mode": "warm",
            "handler": "handler:handle",
            "concurrency": 4,
            "min_containers": 4,
            "max_containers": 4,
            "idle_timeout": 600,
            "queue_size": 100_000,
        }
        r = await http.post("/system/functions", json=spec)
        r.raise_for_status()
        # Warm up: every container ready, connections open.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = (await http.get("/system/functions/noop")).json()["containers"]
            if state.get("ready", 0) >= 4:
                break
            await asyncio.sleep(0.2)
        await fire(http, "/function/noop", 200, clients)

        # 1. Enqueue-to-start with a free warm container: one call at a time.
        delays = []
        for i in range(200):
            r = await http.post("/async-function/noop", content=str(i).encode())
            call_id = r.headers["x-call-id"]
            rec = await http.get(f"/invocations/{call_id}/result", params={"wait": "10"})
            assert rec.status_code == 200, rec.text
            row = (await http.get(f"/invocations/{call_id}")).json()
            delays.append(float(row["started_at"] - row["queued_at"]))

        # 2. Enqueue rate and async drain.
        t0 = time.perf_counter()
        accepted = await fire(http, "/async-function/noop", calls, clients)
        t_enqueued = time.perf_counter() - t0
        assert all(r.status_code == 202 for r in accepted), {r.status_code for r in accepted}
        ids = {r.headers["x-call-id"] for r in accepted}
        rows = await records(http, ids, 600)
        first = min(int(str(r["queued_at"])) for r in rows)
        last = max(int(str(r["finished_at"])) for r in rows)
        async_drain = (last - first) / 1000

        # 3. Sync drain: the same number of calls over the same containers.
        t0 = time.perf_counter()
        answered = await fire(http, "/function/noop", calls, clients)
        sync_drain = time.perf_counter() - t0
        assert all(r.status_code == 200 for r in answered)

    rate = calls / t_enqueued
    p50, p99 = pct(delays, 50), pct(delays, 99)
    ratio = async_drain / sync_drain
    ok = {True: "PASS", False: "FAIL"}
    print(f"async bench: {calls} calls, {clients} clients, 4 warm containers x concurrency 4")
    print(
        f"enqueue rate:      {rate:8.0f} calls/s accepted durably"
        f"  (target >= 1000: {ok[rate >= 1000]})"
    )
    print(
        f"enqueue-to-start:  p50 {p50:.1f} ms  p99 {p99:.1f} ms"
        f"  mean {statistics.mean(delays):.1f} ms  (target p50 <= 10 ms: {ok[p50 <= 10]})"
    )
    print(f"drain async:       {async_drain:.2f} s ({calls / async_drain:.0f} calls/s)")
    print(f"drain sync:        {sync_drain:.2f} s ({calls / sync_drain:.0f} calls/s)")
    print(f"ratio async/sync:  {ratio:.2f}  (target <= 1.3: {ok[ratio <= 1.3]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()
    engine = docker.from_env()
    build_image(engine, IMAGE, HANDLER, "async")
    try:
        with gateway(engine, "async") as gw:
            asyncio.run(measure(gw.url, gw.token, args.calls, args.clients))
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            engine.images.remove(IMAGE, force=True)


if __name__ == "__main__":
    main()
