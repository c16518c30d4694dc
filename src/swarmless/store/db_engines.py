"""The store's SQLAlchemy engines: the URL with its async driver, and (writer, reader).

SQLite gets a single-connection writer (one transaction at a time, WAL, bounded
``busy_timeout``) and a small pool of readers; PostgreSQL one pool for both, every wait
bounded (``connect_timeout``, ``command_timeout``). :class:`~swarmless.store.db.Database`
takes the two engines; :func:`async_url` and :func:`engines` are re-exported there.

A PostgreSQL connection can die while it idles in the pool (the server restarted, its
backend terminated, an idle timeout). No ``pool_pre_ping`` (BEGIN, a query and ROLLBACK
on every checkout, three round trips per write and per read); instead, at no cost:

- a connection the driver already knows is closed (the event loop saw the server hang
  up) is replaced at checkout (:func:`_closed_at_checkout`);
- BEGIN is sent when the transaction begins (:func:`_begin_now`: asyncpg's adapter would
  send it just before the first statement, so no round trip is added), and an error of a
  dead connection is a disconnect to SQLAlchemy (:func:`_dead_is_disconnect`): the
  connection is invalidated and ``DBAPIError.connection_invalidated`` set, so that
  :meth:`~swarmless.store.db.Database._begin` begins once more on a fresh connection
  (BEGIN had no effect; nothing after it is ever retried);
- connections are replaced after :data:`PG_RECYCLE` seconds, so that one silently dropped
  by a firewall or a proxy's idle timeout is rarely met at all.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from swarmless.exceptions import InvalidArgument
from swarmless.store.db_errors import dead_connection

__all__ = ["PG_RECYCLE", "async_url", "engines"]

#: A PostgreSQL connection this old (seconds) is closed and replaced at its next checkout
#: (under the 350 s idle timeout of common cloud load balancers and NATs).
PG_RECYCLE = 300.0


def async_url(url: str) -> URL:
    """The SQLAlchemy URL with the async driver: ``sqlite:///x.db`` -> ``sqlite+aiosqlite``,
    ``postgresql://`` (or ``postgres://``) -> ``postgresql+asyncpg``."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise InvalidArgument(f"not a database URL: {url!r}") from None
    backend = u.get_backend_name()
    if backend == "sqlite":
        if u.database in (None, "", ":memory:"):
            raise InvalidArgument(
                "the store needs a file (sqlite:///path/to/swarmless.db), not in-memory SQLite"
            )
        return u.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return u.set(drivername="postgresql+asyncpg")
    raise InvalidArgument(
        f"the store URL must start with sqlite:/// or postgresql://, got {u!r} "
        "(e.g. sqlite:////var/lib/swarmless/swarmless.db)"
    )


def engines(
    url: URL, *, busy_timeout: float, connect_timeout: float
) -> tuple[AsyncEngine, AsyncEngine]:
    """(writer, reader): SQLite gets a single-connection writer and a pool of readers in
    WAL mode; PostgreSQL one pool for both, every wait bounded."""
    if url.get_backend_name() != "sqlite":
        pg = create_async_engine(
            url,
            pool_recycle=PG_RECYCLE,
            pool_timeout=connect_timeout * 2,
            connect_args={"timeout": connect_timeout, "command_timeout": 60},
        )
        event.listen(pg.sync_engine.pool, "checkout", _closed_at_checkout)
        event.listen(pg.sync_engine, "handle_error", _dead_is_disconnect)
        dialect = pg.sync_engine.dialect
        lazy = dialect.do_begin
        # This engine's dialect only (SQLAlchemy calls ``engine.dialect.do_begin``).
        dialect.do_begin = functools.partial(_begin_now, lazy=lazy)  # type: ignore[method-assign]
        return pg, pg
    assert url.database is not None
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    args = {"timeout": busy_timeout}
    # Every use of the writer is one transaction (``begin()``) that commits or rolls back:
    # a connection goes back to the pool rolled back only if it is still in one (the
    # default rolls back every time, one more trip to aiosqlite's thread per write).
    writer = create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=60,
        pool_reset_on_return=None,
        connect_args=args,
    )
    event.listen(writer.sync_engine, "reset", _rollback_if_open)
    reader = create_async_engine(
        url, pool_size=4, max_overflow=4, pool_timeout=connect_timeout * 2, connect_args=args
    )
    for engine, is_writer in ((writer, True), (reader, False)):

        def setup(dbapi_conn: Any, _record: Any, is_writer: bool = is_writer) -> None:
            cursor = dbapi_conn.cursor()
            if is_writer:
                cursor.execute("PRAGMA journal_mode=WAL")
                # The WAL file shrinks back to this after a checkpoint (bytes).
                cursor.execute(f"PRAGMA journal_size_limit={16 << 20}")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.close()

        event.listen(engine.sync_engine, "connect", setup)
    return writer, reader


def _closed_at_checkout(_dbapi_conn: Any, _record: Any, proxy: Any) -> None:
    """PostgreSQL: a pooled connection the driver knows is closed is replaced (the pool
    opens a new one in its place) instead of failing its first statement."""
    is_closed = getattr(proxy.driver_connection, "is_closed", None)
    if is_closed is not None and is_closed():
        raise DisconnectionError("the server closed the connection while it was idle")


def _begin_now(conn: Any, lazy: Any) -> None:
    """PostgreSQL: BEGIN sent now (SQLAlchemy's ``do_begin``, in its error handling), not
    at the first statement; ``lazy`` (the dialect's own) with another asyncpg adapter."""
    adapter = getattr(conn, "dbapi_connection", conn)
    mutex = getattr(adapter, "_execute_mutex", None)
    start = getattr(adapter, "_start_transaction", None)
    if mutex is None or start is None or getattr(adapter, "_transaction", False) is not None:
        lazy(conn)
        return

    async def begin() -> None:
        async with mutex:
            if adapter._transaction is None:
                await start()

    await_(begin())


def _dead_is_disconnect(ctx: ExceptionContext) -> None:
    """PostgreSQL: an error of a connection that is dead is a disconnect (SQLAlchemy then
    invalidates it and sets ``connection_invalidated``) even when the driver has not yet
    marked it closed (the server's goodbye read as the answer to BEGIN)."""
    if not ctx.is_disconnect and dead_connection(ctx.original_exception):
        ctx.is_disconnect = True


def _rollback_if_open(dbapi_conn: Any, _record: Any, state: Any) -> None:
    """A SQLite connection back in the pool: roll back what is left open, if anything."""
    if state.asyncio_safe and dbapi_conn.driver_connection.in_transaction:
        dbapi_conn.rollback()
