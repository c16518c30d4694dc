"""The store, against real databases: SQLite in a temporary folder, and PostgreSQL from
scripts/postgres.sh (skipped only when that script cannot provide one, with its reason)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from swarmless.exceptions import InvalidArgument, SwarmlessError
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.spec import FunctionSpec
from swarmless.store import Store
from swarmless.store.schema import SCHEMA_VERSION, invocations
from swarmless.store.store import async_url
from tests.waiting import eventually

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A store URL on an empty database, one per test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/not-yet/swarmless.db"
        return
    yield request.getfixturevalue("postgres_database")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/swarmless.db"


def rec(function: str = "echo", **kw: Any) -> InvocationRecord:
    return InvocationRecord(id=kw.pop("id", new_call_id()), function=function, mode="oneshot", **kw)


# -- URLs and schema ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite"),
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg"),
        ("postgresql+psycopg2://u@h/db", "postgresql+asyncpg"),
        ("postgres://u@h/db", "postgresql+asyncpg"),
    ],
)
def test_urls_get_the_async_driver(given: str, driver: str) -> None:
    assert async_url(given).drivername == driver


@pytest.mark.parametrize("bad", ["mysql://u@h/db", "sqlite://", "sqlite:///:memory:", "nope"])
def test_other_urls_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        async_url(bad)


def test_invocations_table_has_a_column_per_record_field() -> None:
    fields = [f.name for f in dataclasses.fields(InvocationRecord)]
    assert [c.name for c in invocations.columns] == fields


def test_an_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(SwarmlessError, match="cannot open the store at"):
        run(Store.open("postgresql://postgres:secret@127.0.0.1:1/nope"))


# -- meta and migrations ------------------------------------------------------------------


def test_meta(url: str) -> None:
    async def main() -> None:
        async with await Store.open(url) as store:
            assert await store.get_meta("schema_version") == str(SCHEMA_VERSION)
            assert await store.get_meta("token") is None
            await store.set_meta("token", "abc")
            await store.set_meta("token", "def")
            assert await store.get_meta("token") == "def"

    run(main())


def test_migrations_are_idempotent_on_reopen(url: str) -> None:
    async def main() -> None:
        for i in range(3):
            async with await Store.open(url) as store:
                assert await store.get_meta("schema_version") == str(SCHEMA_VERSION)
                if i == 0:
                    await store.set_meta("kept", "yes")
                    await store.put_function(FunctionSpec(name="echo", image="busybox"))
                assert await store.get_meta("kept") == "yes"
                assert [s.name for s, _ in await store.list_functions()] == ["echo"]

    run(main())


def test_a_newer_schema_is_refused(url: str) -> None:
    async def main() -> None:
        async with await Store.open(url) as store:
            await store.set_meta("schema_version", str(SCHEMA_VERSION + 1))
        with pytest.raises(SwarmlessError, match="newer than this swarmless knows"):
            await Store.open(url)

    run(main())


def test_sqlite_runs_in_wal_mode(sqlite_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with await Store.open(sqlite_url):
            pass

    run(main())
    with sqlite3.connect(tmp_path / "swarmless.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


# -- functions ---------------------------------------------------------------------------


def test_functions_crud_and_versions(url: str) -> None:
    async def main() -> None:
        async with await Store.open(url) as store:
            echo = FunctionSpec.from_dict(
                {
                    "name": "echo",
                    "image": "busybox",
                    "command": "echo hi",
                    "env": {"A": 1},
                    "secrets": ["s"],
                    "placement": ["node.role == worker"],
                    "build": "/src/echo",
                }
            )
            assert await store.get_function("echo") is None
            assert await store.put_function(echo) == 1
            assert await store.put_function(echo) == 1  # the same spec keeps its version
            assert await store.get_function("echo") == (echo, 1)
            faster = echo.replace(timeout=5)
            assert await store.put_function(faster) == 2
            assert await store.put_function(echo) == 3
            assert await store.get_function("echo") == (echo, 3)
            await store.put_function(FunctionSpec(name="a-first", image="busybox"))
            listed = await store.list_functions()
            assert [(s.name, v) for s, v in listed] == [("a-first", 1), ("echo", 3)]
            assert await store.delete_function("echo") is True
            assert await store.delete_function("echo") is False
            assert await store.get_function("echo") is None
            assert await store.put_function(echo) == 1  # a new function again

    run(main())


# -- invocation records -------------------------------------------------------------------


def test_write_behind_then_read_back(url: str) -> None:
    async def main() -> None:
        store = await Store.open(url, flush_interval=60)
        other = await Store.open(url)
        try:
            r = rec(queued_at=1)
            store.record(r)
            r.status = "running"  # the store copied it: this change is not recorded
            got = await store.get_invocation(r.id)
            assert got is not None
            assert got.status == "queued"
            assert await other.get_invocation(r.id) is None  # still only buffered
            r.status, r.exit_code, r.cold, r.run_ms = "succeeded", 0, True, 12.5
            store.record(r)  # replaces the buffered one
            assert await store.get_invocation(r.id) == r
            await store.flush()
            assert await other.get_invocation(r.id) == r
        finally:
            await store.close()
            await other.close()

    run(main())


def test_the_background_task_writes_within_the_interval(url: str) -> None:
    async def main() -> None:
        async with await Store.open(url) as store, await Store.open(url) as other:
            r = rec()
            store.record(r)

            async def written() -> bool:
                return await other.get_invocation(r.id) == r

            await eventually(written, 2, "the record written by the background task")

    run(main())


def test_a_full_batch_is_written_at_once(url: str) -> None:
    async def main() -> None:
        async with (
            await Store.open(url, flush_interval=60, batch_size=20) as store,
            await Store.open(url) as other,
        ):
            records = [rec(queued_at=i) for i in range(20)]
            for r in records:
                store.record(r)

            async def written() -> bool:
                return await other.get_invocation(records[-1].id) is not None

            await eventually(written, 2, "the full batch written")
            assert len(await other.list_invocations(limit=100)) == 20

    run(main())


def test_close_flushes_and_reopen_reads(url: str) -> None:
    async def main() -> None:
        store = await Store.open(url, flush_interval=60)
        records = [rec(queued_at=i, status="succeeded") for i in range(300)]
        for r in records:
            store.record(r)
        await store.put_logs(records[0].id, b"out", b"err")
        await store.close()
        await store.close()  # twice is fine
        with pytest.raises(SwarmlessError, match="closed"):
            store.record(rec())
        async with await Store.open(url) as again:
            listed = await again.list_invocations(limit=1000)
            assert sorted(r.id for r in listed) == sorted(r.id for r in records)
            assert await again.get_invocation(records[7].id) == records[7]
            assert await again.get_logs(records[0].id) == (b"out", b"err")

    run(main())


def test_many_records_from_many_tasks_all_arrive(url: str) -> None:
    async def main() -> None:
        async with await Store.open(url, batch_size=100) as store:

            async def caller(n: int) -> list[str]:
                ids = []
                for i in range(50):
                    r = rec(function=f"f{n % 3}", queued_at=i)
                    store.record(r)
                    r.status = "succeeded"
                    await asyncio.sleep(0)
                    store.record(r)
                    ids.append(r.id)
                return ids

            ids = [i for batch in await asyncio.gather(*map(caller, range(20))) for i in batch]
            # Written before the list is read (the list's own wait for the buffer is bounded
            # at 1 s, which a loaded machine can outrun).
            await store.flush()
            listed = await store.list_invocations(limit=5000)
            assert sorted(r.id for r in listed) == sorted(ids)
            assert {r.status for r in listed} == {"succeeded"}

    run(main())


def test_save_is_durable_at_once_and_beats_a_buffered_copy(url: str) -> None:
    async def main() -> None:
        async with (
            await Store.open(url, flush_interval=60) as store,
            await Store.open(url) as other,
        ):
            r = rec(kind="async")
            store.record(r)  # buffered, older
            newer = dataclasses.replace(r, status="running", attempt=2)
            await store.save(newer)
            assert await other.get_invocation(r.id) == newer
            await store.flush()  # must not write the older buffered copy over it
            assert await other.get_invocation(r.id) == newer

    run(main())


def test_list_filters_and_ordering(url: str) -> None:
    async def main() -> None:
        async with await Store.open(url, flush_interval=60) as store:
            parent = rec(function="front", queued_at=100, status="succeeded")
            rows = [
                parent,
                rec(function="vote", queued_at=101, parent=parent.id, status="succeeded"),
                rec(function="vote", queued_at=103, parent=parent.id, status="failed"),
                rec(function="result", queued_at=102, status="failed"),
                rec(function="vote", queued_at=104, status="queued"),
            ]
            await store.save(rows[0])
            for r in rows[1:]:
                store.record(r)  # list sees buffered records too

            async def ids(**kw: Any) -> list[str]:
                return [r.id for r in await store.list_invocations(**kw)]

            by_time = sorted(rows, key=lambda r: r.queued_at, reverse=True)
            assert await ids() == [r.id for r in by_time]
            assert await ids(limit=2) == [r.id for r in by_time[:2]]
            assert await ids(function="vote") == [rows[4].id, rows[2].id, rows[1].id]
            assert await ids(status="failed") == [rows[2].id, rows[3].id]
            assert await ids(parent=parent.id) == [rows[2].id, rows[1].id]
            assert await ids(function="vote", status="failed", parent=parent.id) == [rows[2].id]
            assert await ids(function="nope") == []
            for bad in (0, -1, True, "10"):
                with pytest.raises(InvalidArgument):
                    await store.list_invocations(limit=bad)  # type: ignore[arg-type]

    run(main())


def test_logs(url: str) -> None:
    async def main() -> None:
        async with (
            await Store.open(url, flush_interval=60) as store,
            await Store.open(url) as other,
        ):
            call_id = new_call_id()
            raw = bytes(range(256)) * 10  # NUL bytes and invalid UTF-8 are kept as they are
            assert await store.get_logs(call_id) is None
            await store.put_logs(call_id, raw, b"")
            assert await store.get_logs(call_id) == (raw, b"")  # buffered
            assert await other.get_logs(call_id) is None
            await store.flush()
            assert await other.get_logs(call_id) == (raw, b"")
            await store.put_logs(call_id, b"again", b"warn")
            await store.flush()
            assert await other.get_logs(call_id) == (b"again", b"warn")

    run(main())


def test_a_record_the_database_refuses_does_not_hold_back_the_others(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with await Store.open(url, flush_interval=60) as store:
            good = [rec(queued_at=i) for i in range(3)]
            bad = rec(id="bad-one", exit_code=2**70)  # fits no integer column
            for r in (good[0], bad, good[1]):
                store.record(r)
            await store.put_logs(good[0].id, b"o", b"e")
            store.record(good[2])
            await store.flush()
            listed = await store.list_invocations()
            assert sorted(r.id for r in listed) == sorted(r.id for r in good)
            assert await store.get_invocation("bad-one") is None
            assert await store.get_logs(good[0].id) == (b"o", b"e")
            with pytest.raises(SwarmlessError, match="store: "):
                await store.save(bad)

    with caplog.at_level(logging.WARNING, logger="swarmless.store"):
        run(main())
    assert any(
        "bad-one" in m and r.levelno == logging.ERROR
        for r in caplog.records
        for m in [r.getMessage()]
    )


def test_a_locked_database_is_retried_and_nothing_is_lost(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the write lock: batches fail, stay buffered and visible, and
    are written once the lock is released."""

    async def main() -> None:
        store = await Store.open(sqlite_url, flush_interval=0.01, busy_timeout=0.05)
        holder = sqlite3.connect(tmp_path / "swarmless.db", isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            records = [rec(queued_at=i) for i in range(5)]
            for r in records:
                store.record(r)

            async def failed_once() -> bool:
                return any("failed" in r.getMessage() for r in caplog.records)

            await eventually(failed_once, 5, "a failed write logged")
            assert await store.get_invocation(records[3].id) == records[3]
            with pytest.raises(SwarmlessError, match="locked"):
                await store.flush()
            assert await store.get_invocation(records[3].id) == records[3]
            late = rec(queued_at=99)
            store.record(late)
            holder.execute("COMMIT")
        finally:
            holder.close()
        await store.close()
        with sqlite3.connect(tmp_path / "swarmless.db") as db:
            ids = {row[0] for row in db.execute("SELECT id FROM invocations")}
        assert ids == {r.id for r in [*records, late]}

    with caplog.at_level(logging.WARNING, logger="swarmless.store"):
        run(main())


def test_record_refuses_what_is_not_a_record(sqlite_url: str) -> None:
    async def main() -> None:
        async with await Store.open(sqlite_url) as store:
            with pytest.raises(InvalidArgument):
                store.record({"id": "x"})  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument):
                store.record(rec(id=""))

    run(main())


# -- leases -------------------------------------------------------------------------------


def test_a_lease_has_one_holder_until_it_expires_or_is_given_up(url: str) -> None:
    async def main() -> None:
        async with await Store.open(url) as a, await Store.open(url) as b:
            got = await a.acquire_lease("gateway:x", "a", "http://a", 30)
            assert (got.holder, got.url) == ("a", "http://a")
            # Held: b is told who holds it; a extends it.
            assert (await b.acquire_lease("gateway:x", "b", "http://b", 30)).holder == "a"
            again = await a.acquire_lease("gateway:x", "a", "http://a", 30)
            assert again.holder == "a"
            assert again.until >= got.until
            # Another name is another lease (another gateway instance on the same store).
            assert (await b.acquire_lease("gateway:y", "b", "http://b", 30)).holder == "b"
            # Given up: taken at the next try.
            assert await a.release_lease("gateway:x", "a")
            assert not await a.release_lease("gateway:x", "a")
            short = await b.acquire_lease("gateway:x", "b", "http://b", 0.2)
            assert short.holder == "b"
            # Expired: taken by whoever asks.
            assert (await a.acquire_lease("gateway:x", "a", "http://a", 30)).holder == "b"
            await eventually(lambda: now_ms() > short.until, 2, "the lease's expiry (clock)")
            assert (await a.acquire_lease("gateway:x", "a", "http://a", 30)).holder == "a"

    run(main())


def test_racing_replicas_never_both_get_the_lease(url: str) -> None:
    async def main() -> None:
        stores = [await Store.open(url) for _ in range(4)]
        try:
            for round_ in range(5):
                name = f"race-{round_}"
                got = await asyncio.gather(
                    *(
                        s.acquire_lease(name, f"r{i}", f"http://r{i}", 30)
                        for i, s in enumerate(stores)
                    )
                )
                assert len({g.holder for g in got}) == 1, got
        finally:
            for s in stores:
                await s.close()

    run(main())


def test_a_stored_spec_todays_rules_refuse_is_left_out_not_fatal(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spec stored by an older swarmless (looser rules) must not stop a gateway's start:
    it is left out, with a log line that says how to mend it."""

    async def put() -> None:
        async with await Store.open(sqlite_url) as store:
            await store.put_function(FunctionSpec(name="fine", image="busybox"))
            await store.put_function(FunctionSpec(name="old", image="busybox"))

    run(put())
    db = sqlite3.connect(tmp_path / "swarmless.db")
    with db:
        db.execute(
            "UPDATE functions SET spec = ? WHERE name = 'old'",
            ('{"name": "old", "image": "busybox", "max_body": "5t"}',),
        )
    db.close()

    async def listed() -> list[str]:
        async with await Store.open(sqlite_url) as store:
            return [s.name for s, _ in await store.list_functions()]

    with caplog.at_level(logging.ERROR, logger="swarmless.store"):
        assert run(listed()) == ["fine"]
    assert "'old' is stored with a spec that is no longer valid" in caplog.text


def test_a_replica_that_asks_for_a_held_lease_marks_it_contended(url: str) -> None:
    async def main() -> None:
        async with await Store.open(url) as a, await Store.open(url) as b:
            got = await a.acquire_lease("gateway:c", "a", "http://a", 30)
            assert not got.contended  # nobody else asked yet
            seen = await b.acquire_lease("gateway:c", "b", "http://b", 30)
            assert (seen.holder, seen.expired) == ("a", False)
            assert (await a.acquire_lease("gateway:c", "a", "http://a", 30)).contended
            # Expired, but the asker wants to check the holder first: it is not taken.
            await a.acquire_lease("gateway:c", "a", "http://a", 0.05)
            await eventually(lambda: _expired(b, "gateway:c"), 5, "the lease expires")
            held = await b.acquire_lease("gateway:c", "b", "http://b", 30, take_expired=False)
            assert (held.holder, held.expired) == ("a", True)
            # Its holder can still renew an expired lease nobody took.
            assert (await a.acquire_lease("gateway:c", "a", "http://a", 30)).holder == "a"

    run(main())


async def _expired(store: Store, name: str) -> bool:
    state = await store.acquire_lease(name, "probe", "http://probe", 30, take_expired=False)
    return state.expired


def test_a_v3_store_is_upgraded_with_lease_contention(sqlite_url: str, tmp_path: Path) -> None:
    """A database written by the previous schema (v3) gets the contention column."""
    from sqlalchemy import create_engine, text

    from swarmless.store.schema import meta, metadata

    engine = create_engine(f"sqlite:///{tmp_path}/swarmless.db")
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(text("ALTER TABLE leases DROP COLUMN contended_until"))
        conn.execute(meta.insert().values(key="schema_version", value="3"))
    engine.dispose()

    async def main() -> None:
        async with await Store.open(sqlite_url) as store:
            assert await store.get_meta("schema_version") == str(SCHEMA_VERSION)
            await store.acquire_lease("gateway:x", "a", "http://a", 30)
            assert (await store.acquire_lease("gateway:x", "b", "http://b", 30)).holder == "a"
            assert (await store.acquire_lease("gateway:x", "a", "http://a", 30)).contended

    run(main())
