"""PostgreSQL connections that die while idle in the store's pool (the server restarted,
the backend terminated, an idle timeout): the next use of the store must not fail.

The store has no ``pool_pre_ping`` (three round trips on every checkout); instead a
connection the driver knows is closed is replaced at checkout, and one that fails its
BEGIN because it was dead is replaced and the transaction begun once more (see
:mod:`swarmless.store.db_engines`). A failure after BEGIN is never retried.

Every backend of the store's database is terminated from the server side
(``pg_terminate_backend``), on the real PostgreSQL of scripts/postgres.sh:

- while the store's event loop runs (it sees the server hang up: the checkout path);
- from a thread while the store's event loop is held (it has not seen the hang-up when
  BEGIN is sent: the BEGIN retry);
- in the middle of a transaction, after a statement succeeded and before COMMIT: the
  transaction fails (503), once, and nothing of it is written;
- under a gateway between calls: sync and async calls and reads all answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import docker
import pytest
from sqlalchemy import func, select

from swarmless.exceptions import GatewayUnavailable
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.store import Store
from swarmless.store.schema import invocations
from tests.conftest import handler_image
from tests.reliability.own_gateway import OwnGateway
from tests.waiting import wait_until

pytestmark = pytest.mark.fault

HANDLER = """
def hello(event, context):
    return {"ok": True}
"""
#: What the store logs when it begins again on a new connection.
RETRIED = "beginning on a new one"


class PgGateway(OwnGateway):
    """A gateway of this suite: instance ``h-pg-...``, Docker objects labelled h-pg=1."""

    PREFIX = "h-pg"
    labels = {"h-pg": "1"}


async def _terminate(admin: str, db: str, *, idle_only: bool = False) -> int:
    """Terminate every backend of database ``db`` from the server side (``idle_only``:
    only those idle at that moment, pooled connections between two uses) and wait
    (bounded) until those are gone; the number terminated. A gateway that runs meanwhile
    may open new connections at once (its lease, its claims): those are not waited for.

    ``idle_only`` leaves alone a backend in the middle of a statement or a transaction:
    a statement cut off there fails, by design, as an outcome not known (a 503, never
    retried: :func:`test_a_transaction_that_died_after_begin_fails_and_is_not_retried`).
    A running gateway's periodic writes (its lease, a claim's sweep) can be caught that
    way at any moment, the more often the longer its first write on a new connection
    takes (about 9 ms more since its bulk writes use row types that asyncpg looks up once
    per connection); a test of an idle gateway's pooled connections terminates only
    those."""
    import asyncpg

    conn = await asyncpg.connect(admin)
    try:
        others = "FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
        if idle_only:
            others += " AND state = 'idle'"
        rows = await conn.fetch(f"SELECT pid, pg_terminate_backend(pid) AS done {others}", db)
        killed = [int(r["pid"]) for r in rows if r["done"]]
        gone = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])"
        deadline = time.monotonic() + 10
        while await conn.fetchval(gone, killed):
            assert time.monotonic() < deadline, f"backends of {db} still there after 10 s"
            await asyncio.sleep(0.02)
        return len(killed)
    finally:
        await conn.close()


def terminate(admin: str, db: str, *, idle_only: bool = False) -> int:
    """:func:`_terminate` in a thread of its own, the caller blocked until it is done: a
    caller's event loop does not run meanwhile (its connections have not seen the
    server hang up when they are next used)."""
    out: list[int | BaseException] = []

    def run() -> None:
        try:
            out.append(asyncio.run(_terminate(admin, db, idle_only=idle_only)))
        except BaseException as e:
            out.append(e)

    thread = threading.Thread(target=run, name="h-pg-terminate")
    thread.start()
    thread.join(30)
    assert out, "terminating the backends took more than 30 s"
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def arec(function: str = "f") -> InvocationRecord:
    return InvocationRecord(
        id=new_call_id(), function=function, mode="warm", kind="async", queued_at=now_ms()
    )


def srec() -> InvocationRecord:
    return InvocationRecord(id=new_call_id(), function="f", mode="warm", status="succeeded")


@pytest.fixture
def store_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="swarmless.store"):
        yield caplog


def dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def fill_pool(store: Store, known: InvocationRecord) -> None:
    """Connections in every place of the pool (its default five), all open: the next
    checkout takes one that was open, not a place to connect anew."""
    await asyncio.gather(*(store.get_invocation(known.id) for _ in range(5)))


async def use_everything(store: Store, known: InvocationRecord) -> None:
    """A read, a write now, an async call queued and claimed, a listing: all answer."""
    assert await store.get_invocation(known.id) == known
    other = srec()
    await store.save(other)
    _, created = await store.enqueue(
        arec(), method="POST", path="", query="", headers=[], body=b"x"
    )
    assert created
    assert len(await store.claim("me", {"f": (1, 60_000)})) == 1
    assert {r.id for r in await store.list_invocations(function="f")} >= {known.id, other.id}
    assert store.available


@contextlib.asynccontextmanager
async def filled(url: str) -> AsyncIterator[tuple[Store, InvocationRecord]]:
    """A store on ``url`` with a record saved and every pooled connection opened."""
    async with await Store.open(url) as store:
        known = srec()
        await store.save(known)
        await fill_pool(store, known)
        yield store, known


def test_connections_the_server_closed_while_idle_are_replaced_at_checkout(
    postgres_url: str, postgres_database: str, store_logs: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with filled(postgres_database) as (store, known):
            # The event loop runs meanwhile: the driver sees the server hang up.
            assert await _terminate(postgres_url, dbname(postgres_database)) >= 1
            await use_everything(store, known)

    asyncio.run(main())
    # Found closed at checkout (free): no BEGIN was sent on a dead connection.
    assert RETRIED not in store_logs.text


def test_a_begin_on_a_dead_connection_is_begun_again_on_a_new_one(
    postgres_url: str, postgres_database: str, store_logs: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with filled(postgres_database) as (store, known):
            # The event loop is held meanwhile: the driver has not seen the hang-up when
            # the next read sends BEGIN on its pooled connection.
            assert terminate(postgres_url, dbname(postgres_database)) >= 1
            assert await store.get_invocation(known.id) == known
            assert RETRIED in store_logs.text
            # A write the same way, through what every write begins with (not _write:
            # waiting for its turn lets the loop run, which then sees the hang-up).
            await fill_pool(store, known)
            assert terminate(postgres_url, dbname(postgres_database)) >= 1
            written = srec()
            async with store._begin(store._writer) as conn:
                await conn.execute(store._upsert(invocations, "id"), [written.to_dict()])
            assert await _count(store, written.id) == 1
            await use_everything(store, known)

    asyncio.run(main())
    assert store_logs.text.count(RETRIED) == 2


async def _count(store: Store, call_id: str) -> int:
    query = select(func.count()).select_from(invocations).where(invocations.c.id == call_id)
    async with store._read() as conn:
        return int((await conn.execute(query)).scalar_one())


@pytest.mark.parametrize("where", ["after a statement", "before COMMIT"])
def test_a_transaction_that_died_after_begin_fails_and_is_not_retried(
    postgres_url: str,
    postgres_database: str,
    store_logs: pytest.LogCaptureFixture,
    where: str,
) -> None:
    """BEGIN and a statement succeeded, then the connection died: the transaction fails
    (503, the store's error of a database away), its body ran once, nothing of it was
    written; the next transaction works."""

    async def main() -> None:
        async with await Store.open(postgres_database) as store:
            first, second = srec(), srec()
            runs = 0
            upsert = store._upsert(invocations, "id")

            async def doomed() -> None:
                nonlocal runs
                async with store._write() as conn:
                    runs += 1
                    await conn.execute(upsert, [first.to_dict()])
                    assert terminate(postgres_url, dbname(postgres_database)) >= 1
                    if where == "after a statement":
                        await conn.execute(upsert, [second.to_dict()])

            with pytest.raises(GatewayUnavailable):
                await doomed()
            assert runs == 1
            assert await _count(store, first.id) == 0
            assert await _count(store, second.id) == 0
            await store.save(first)
            assert await _count(store, first.id) == 1

    asyncio.run(main())
    assert RETRIED not in store_logs.text


# -- a gateway -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(build_image: Callable[..., str]) -> str:
    return handler_image(build_image, "store-reconnect", HANDLER)


def test_a_gateway_answers_after_the_server_terminated_its_connections(
    engine: docker.DockerClient,
    tmp_path: Path,
    image: str,
    postgres_url: str,
    postgres_database: str,
) -> None:
    gw = PgGateway(tmp_path, store_url=postgres_database).start()
    try:
        with gw.http() as http:
            spec = {"name": "hello", "image": image, "mode": "warm", "handler": "handler:hello"}
            assert http.post("/system/functions", json=spec).status_code == 201
            assert http.post("/function/hello").status_code == 200
            r = http.post("/async-function/hello")
            assert r.status_code == 202, r.text
            before = r.headers["x-call-id"]

            def status(call_id: str) -> str:
                got = http.get(f"/invocations/{call_id}")
                assert got.status_code == 200, got.text
                return str(got.json()["status"])

            wait_until(lambda: status(before) == "succeeded", 60, "the first async call")
            for _ in range(2):
                assert terminate(postgres_url, dbname(postgres_database), idle_only=True) >= 1
                # Each answers at once: no 503, no 500.
                assert status(before) == "succeeded"
                assert http.post("/function/hello").status_code == 200
                r = http.post("/async-function/hello")
                assert r.status_code == 202, r.text
                after = r.headers["x-call-id"]
                assert http.get("/system/functions").status_code == 200
                listed = http.get("/invocations", params={"function": "hello"})
                assert listed.status_code == 200, listed.text
                wait_until(lambda a=after: status(a) == "succeeded", 60, "an async call after")
                health = http.get("/healthz").json()
                assert health["status"] == "ok", health
    finally:
        gw.stop(engine)
