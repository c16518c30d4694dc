"""PostgreSQL: a group commit of bulk writes (accepted calls, outcomes, running marks) is
one statement sent alone, with no BEGIN and no COMMIT (``Database._write_alone``), on the
real PostgreSQL of scripts/postgres.sh: what the server is sent, what is written in a
transaction instead, and a statement that finds its pooled connection dead (not written:
written again; written: not written twice)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from swarmless.records import now_ms
from swarmless.store import Store, StoredResult
from swarmless.store.db import Database
from swarmless.store.schema import async_queue, invocations
from tests.reliability.test_store_reconnect import dbname, fill_pool, srec, terminate
from tests.test_queue import arec, put

OK = StoredResult(status=200, headers=[("content-type", "text/plain")], body=b"ok")


@contextlib.contextmanager
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL of every statement asyncpg sends meanwhile with ``execute`` (BEGIN, COMMIT,
    a group's statement) or ``executemany``."""
    queries: list[str] = []
    execute, executemany = asyncpg.Connection.execute, asyncpg.Connection.executemany

    async def spy_execute(self: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
        queries.append(query)
        return await execute(self, query, *args, **kw)

    async def spy_executemany(self: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
        queries.append(query)
        return await executemany(self, query, *args, **kw)

    with monkeypatch.context() as m:
        m.setattr(asyncpg.Connection, "execute", spy_execute)
        m.setattr(asyncpg.Connection, "executemany", spy_executemany)
        yield queries


def transaction_control(queries: list[str]) -> list[str]:
    return [q for q in queries if q.strip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK"))]


async def queued_rows(store: Store, call_id: str) -> int:
    query = select(func.count()).select_from(async_queue).where(async_queue.c.id == call_id)
    async with store._read() as conn:
        return int((await conn.execute(query)).scalar_one())


def test_a_group_of_accepts_outcomes_and_marks_is_one_statement_without_begin_or_commit(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with await Store.open(postgres_database) as store:
            first = [arec() for _ in range(6)]
            await asyncio.gather(*(put(store, r) for r in first))
            claimed = await store.claim("gw", {"echo": (6, 60_000)})
            assert len(claimed) == 6
            ending, started = first[:3], first[3]
            for r in ending:
                r.status, r.started_at, r.finished_at = "succeeded", now_ms(), now_ms()
            second = [arec() for _ in range(10)]
            with sent(monkeypatch) as queries:
                # All submitted in one turn of the event loop: one group.
                store.mark_running(started.id)
                got = await asyncio.gather(
                    *(put(store, r) for r in second),
                    store.finish_many([(r, OK) for r in ending]),
                )
            assert len(queries) == 1, queries
            assert not transaction_control(queries), queries
            [sql] = queries
            for part in (
                "INSERT INTO async_queue",
                "UPDATE invocations",
                "DELETE FROM async_queue",
            ):
                assert part in sql, sql
            # All of it written.
            assert got[:-1] == [(r.id, True) for r in second]
            for r in ending:
                assert (await store.get_invocation(r.id)).status == "succeeded"  # type: ignore[union-attr]
                assert (await store.get_result(r.id)) == OK
                assert await queued_rows(store, r.id) == 0
            assert (await store.get_invocation(started.id)).status == "running"  # type: ignore[union-attr]
            again = await store.claim("gw2", {"echo": (20, 60_000)})
            assert sorted(c.id for c in again) == sorted(r.id for r in second)

    asyncio.run(main())


def test_a_group_that_runs_another_statement_is_written_in_a_transaction(
    postgres_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bulk op whose writer runs a statement that cannot join the one statement: nothing
    is sent alone, the group is written in a transaction, every op of it."""

    async def main() -> None:
        async with await Store.open(postgres_database) as store:
            marked = srec()
            await store.save(marked)
            await store.flush()
            other = (
                update(invocations)
                .where(invocations.c.id == bindparam("k"))
                .values(error=bindparam("error"))
            )  # not registered as a bulk statement

            async def writer(conn: AsyncConnection, items: list[Any]) -> None:
                await store._executemany(conn, other, [{"k": i, "error": "set"} for i in items])

            async def op(conn: AsyncConnection) -> None:
                await writer(conn, [marked.id])

            accepted = arec()
            with sent(monkeypatch) as queries:
                done = store._group.submit(op, ("other", writer, marked.id, None))
                await asyncio.gather(put(store, accepted), done)
            assert transaction_control(queries)[0].upper().startswith("BEGIN"), queries
            assert transaction_control(queries)[-1].upper().startswith("COMMIT"), queries
            assert (await store.get_invocation(marked.id)).error == "set"  # type: ignore[union-attr]
            assert await queued_rows(store, accepted.id) == 1

    asyncio.run(main())


@pytest.fixture
def store_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="swarmless.store"):
        yield caplog


def queue_row(call_id: str) -> dict[str, Any]:
    """A queued call's row, as the store writes one (``QueueOps.enqueue_future``)."""
    now = now_ms()
    return {
        "id": call_id, "function": "echo", "state": "queued", "method": "POST", "path": "",
        "query": "", "headers": "[]", "body": b"x", "callback_url": None,
        "idempotency_key": None, "parent": None, "late": False, "enqueued_at": now,
        "not_before": now, "attempt": 0, "lease_owner": None, "lease_until": None,
    }  # fmt: skip


def test_a_statement_that_finds_its_connection_dead_unwritten_is_written_in_a_transaction(
    postgres_url: str, postgres_database: str, store_logs: pytest.LogCaptureFixture
) -> None:
    """Every backend terminated while the store's event loop is held: the statement goes
    on a pooled connection the driver has not seen die (straight after, with nothing
    that lets the loop run first: a group commit's window would). It was not written;
    read back as such, it is written in a transaction on a new connection."""

    async def main() -> None:
        async with await Store.open(postgres_database) as store:
            known = srec()
            await store.save(known)
            await store.flush()
            await fill_pool(store, known)
            r = arec()

            async def body(conn: AsyncConnection) -> None:
                await store._executemany(conn, store._queue_insert, [queue_row(r.id)])
                await store._executemany(conn, store._upsert(invocations, "id"), [r.to_dict()])

            assert terminate(postgres_url, dbname(postgres_database)) >= 1
            assert await store._write_alone(body) is False
            assert await queued_rows(store, r.id) == 0
            async with store._write() as conn, store._gathered(conn):
                await body(conn)
            assert await queued_rows(store, r.id) == 1
            [claimed] = await store.claim("gw", {"echo": (5, 60_000)})
            assert claimed.id == r.id
            assert store.available

    asyncio.run(main())
    assert "its statement was not written: writing it in a transaction" in store_logs.text


def test_a_statement_written_before_its_connection_died_is_not_written_twice(
    postgres_database: str,
    store_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The group's statement is written, then its connection fails before the answer
    (injected after the real statement): read back as written, the calls are accepted,
    each queued once."""
    real = Database._executemany_pg
    failed: list[bool] = []

    async def then_dead(self: Database, conn: Any, work: Any, *, alone: bool = False) -> None:
        await real(self, conn, work, alone=alone)
        if alone and not failed:
            failed.append(True)
            raise ConnectionResetError("injected: the connection died after the statement")

    monkeypatch.setattr(Database, "_executemany_pg", then_dead)

    async def main() -> None:
        async with await Store.open(postgres_database) as store:
            recs = [arec() for _ in range(5)]
            got = await asyncio.gather(*(put(store, r) for r in recs))
            assert got == [(r.id, True) for r in recs]
            assert failed
            for r in recs:
                assert await queued_rows(store, r.id) == 1
            claimed = await store.claim("gw", {"echo": (10, 60_000)})
            assert sorted(c.id for c in claimed) == sorted(r.id for r in recs)
            assert store.available

    asyncio.run(main())
    assert "its statement was written" in store_logs.text
