"""Retention: the sweeper deletes old records, logs, results and dead letters, by age and
by count, never a call still queued or running; the store's file stops growing; a real
gateway sweeps by itself (on SQLite and a real PostgreSQL for the store's part)."""

from __future__ import annotations

import asyncio
import random
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from sqlalchemy import select

from swarmless.exceptions import InvalidArgument
from swarmless.records import InvocationRecord, now_ms
from swarmless.retention import Retention
from swarmless.store import Store, StoredResult
from swarmless.store.schema import async_queue, invocation_logs, invocation_results, invocations
from tests.conftest import handler_image
from tests.gateway_harness import RunningGateway
from tests.test_store import run, url  # noqa: F401  fixtures

DAY = 86_400_000
T = now_ms()


def cid(ms: int) -> str:
    """A call id made at epoch ``ms`` (the form of records.new_call_id)."""
    return f"{ms:012x}-{random.getrandbits(48):012x}"


def sync_rec(ms: int, status: str = "succeeded") -> InvocationRecord:
    return InvocationRecord(
        id=cid(ms),
        function="f",
        mode="warm",
        status=status,
        queued_at=ms,  # type: ignore[arg-type]
    )


async def enqueue(store: Store, ms: int) -> InvocationRecord:
    rec = InvocationRecord(id=cid(ms), function="f", mode="warm", kind="async", queued_at=ms)
    await store.enqueue(rec, method="POST", path="", query="", headers=[], body=b"request")
    return rec


async def ids(store: Store, table: Any) -> set[str]:
    async with store._read() as conn:
        return {str(i) for i in (await conn.execute(select(table.c.id))).scalars()}


def nothing(**limits: float) -> Retention:
    """A retention that keeps everything but what ``limits`` says."""
    keep_all: dict[str, float] = {
        f"{k}_{w}": 0 for k in ("records", "logs", "results", "dead") for w in ("age", "count")
    }
    return Retention(**(keep_all | limits))  # type: ignore[arg-type]


def test_retention_settings_are_checked() -> None:
    with pytest.raises(InvalidArgument, match="records_count"):
        Retention(records_count=-1)
    with pytest.raises(InvalidArgument, match="interval"):
        Retention(interval=0)
    with pytest.raises(InvalidArgument, match="logs_age"):
        Retention(logs_age=float("nan"))


def test_sweep_by_age_and_count_keeps_what_is_still_queued(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            old = [sync_rec(T - 10 * DAY + i) for i in range(5)]
            new = [sync_rec(T - 3_600_000 + i) for i in range(5)]
            for r in old + new:
                store.record(r)
                await store.put_logs(r.id, b"out " + r.id.encode(), b"")
            # Async calls: one old still running, one old that succeeded (with its result
            # and queue row), one old dead letter (its request kept for a redrive).
            queued = await enqueue(store, T - 10 * DAY)
            done = await enqueue(store, T - 10 * DAY + 10)
            dead = await enqueue(store, T - 10 * DAY + 20)
            assert len(await store.claim("me", {"f": (5, 60_000)}, now=T)) == 3
            done.status, dead.status = "succeeded", "dead"
            await store.finish(done, StoredResult(status=200, headers=[], body=b"answer"))
            await store.finish(dead)
            await store.flush()

            # By age: finished records older than a day go, with their logs, result and
            # queue row; the queued call and the dead letter (14 days) stay.
            swept = await store.sweep(nothing(records_age=86_400), now=T)
            assert swept["records"] == 6
            left = await ids(store, invocations)
            assert left == {r.id for r in new} | {queued.id, dead.id}
            assert await ids(store, invocation_logs) == {r.id for r in new}
            assert await ids(store, invocation_results) == set()
            assert await ids(store, async_queue) == {queued.id, dead.id}

            # By count: the newest 3 finished records stay.
            assert (await store.sweep(nothing(records_count=3), now=T))["records"] == 2
            assert await ids(store, invocations) == {r.id for r in new[2:]} | {
                queued.id,
                dead.id,
            }
            # Logs by count, apart from their records: the newest one stays.
            assert (await store.sweep(nothing(logs_count=1), now=T))["logs"] == 2
            assert await ids(store, invocation_logs) == {new[-1].id}
            assert len(await ids(store, invocations)) == 5

            # Dead letters by age: the request, the record and all of it go.
            assert (await store.sweep(nothing(dead_age=86_400), now=T))["dead"] == 1
            assert dead.id not in await ids(store, async_queue)
            assert dead.id not in await ids(store, invocations)
            # What is still running is never swept, however old.
            everything = nothing(records_age=1, records_count=1, dead_age=1, dead_count=1)
            await store.sweep(everything, now=T + 100 * DAY)
            assert queued.id in await ids(store, async_queue)
            assert queued.id in await ids(store, invocations)
            assert store.stats().swept == {"records": 11, "logs": 2, "results": 0, "dead": 1}

    run(main())


def test_results_and_dead_letters_by_count(url: str) -> None:  # noqa: F811
    async def main() -> None:
        async with await Store.open(url) as store:
            calls = [await enqueue(store, T - 1000 + i) for i in range(6)]
            await store.claim("me", {"f": (10, 60_000)}, now=T)
            for i, rec in enumerate(calls):
                rec.status = "succeeded" if i % 2 else "dead"
                await store.finish(rec, StoredResult(status=200, headers=[], body=b"x"))
            swept = await store.sweep(nothing(results_count=2, dead_count=1), now=T)
            assert swept == {"records": 0, "logs": 0, "results": 4, "dead": 2}
            assert await ids(store, invocation_results) == {calls[4].id, calls[5].id}
            dead = {r.id for r in calls if r.status == "dead"}
            # (a call that succeeded without an idempotency key left no queue row)
            assert await ids(store, async_queue) == dead - {calls[0].id, calls[2].id}

    run(main())


def file_size(path: Path) -> int:
    """The database's size once its WAL is checkpointed (what stays on disk)."""
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def grow(path: Path, retention: Retention | None, rounds: int = 12) -> list[int]:
    """Sizes of the store's file after each round of 1000 calls (records and 2 KiB logs)."""

    async def main() -> list[int]:
        sizes = []
        async with await Store.open(f"sqlite:///{path}") as store:
            for r in range(rounds):
                for i in range(1000):
                    rec = sync_rec(T + r * 1000 + i)
                    store.record(rec)
                    store.keep_logs(rec.id, b"o" * 2048, b"")
                await store.flush()
                if retention is not None:
                    await store.sweep(retention, now=T + rounds * 1000)
                sizes.append(file_size(path))
        return sizes

    return asyncio.run(main())


def test_the_store_file_stops_growing_under_retention(tmp_path: Path) -> None:
    kept = nothing(records_count=2000, logs_count=2000)
    swept = grow(tmp_path / "swept.db", kept)
    kept_all = grow(tmp_path / "kept.db", None)
    mib = [f"{s / 2**20:.1f}" for s in swept]
    print(f"\n[retention] 12k calls, 2k kept: file MiB by round {mib}")
    print(f"[retention] without retention: {[f'{s / 2**20:.1f}' for s in kept_all]}")
    # With retention the file reaches its size within a few rounds and stays there; the
    # freed pages are reused.
    assert max(swept[4:]) <= swept[3] * 1.1, swept
    # Without it, it grows with every round.
    assert kept_all[-1] > 2.5 * kept_all[3], kept_all
    assert kept_all[-1] > 3 * swept[-1]


# -- a real gateway sweeps by itself ----------------------------------------------------------

HANDLER = """
def hello(event, context):
    print("hello from", context.call_id)
    return {"ok": True}
"""


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "retention", HANDLER)


@pytest.fixture
def gw(
    engine: docker.DockerClient, labels: dict[str, str], tmp_path: Path
) -> Iterator[RunningGateway]:
    g = RunningGateway(
        tmp_path,
        labels,
        retention_records_count=30,
        retention_logs_count=10,
        retention_results_count=5,
        retention_interval=0.3,
    ).start()
    yield g
    g.stop(engine)


def counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("invocations", "invocation_logs", "invocation_results", "async_queue")
        }


def test_a_gateway_sweeps_by_itself(gw: RunningGateway, image: str) -> None:
    db = gw.settings.data_dir / "swarmless.db"
    with gw.http() as http:
        spec = {"name": "hello", "image": image, "mode": "warm", "handler": "handler:hello"}
        assert http.post("/system/functions", json=spec).status_code == 201
        for _ in range(80):
            assert http.post("/function/hello").status_code == 200
        accepted = [http.post("/async-function/hello").headers["x-call-id"] for _ in range(20)]
        last = accepted[-1]
        assert http.get(f"/invocations/{last}/result", params={"wait": 30}).status_code == 200

        def swept_down() -> bool:
            now = counts(db)
            return (
                now["invocations"] <= 30
                and now["invocation_results"] <= 5
                and now["invocation_logs"] <= 10
            )

        gw.wait_for(swept_down, 30, "the sweeper to keep 30 records, 10 logs, 5 results")
        now = counts(db)
        metrics = http.get("/metrics").text
        swept = dict(re.findall(r'swarmless_store_swept_total\{kind="(\w+)"\} (\d+)', metrics))
        assert int(float(swept["records"])) >= 70, swept
        print(f"\n[retention] gateway: 100 calls, kept {now}; swept {swept}")
        # An old result that was swept says so (404), its record may be gone too.
        r = http.get(f"/invocations/{accepted[0]}/result")
        assert r.status_code == 404, r.text
        assert http.get("/healthz").json()["role"] == "active"
