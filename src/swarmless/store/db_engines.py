"""The store's SQLAlchemy engines: the URL with its async driver, and (writer, reader).

SQLite gets a single-connection writer (one transaction at a time, WAL, bounded
``busy_timeout``) and a small pool of readers; PostgreSQL one pool for both, every wait
bounded (``connect_timeout``, ``command_timeout``). :class:`~swarmless.store.db.Database`
takes the two engines; :func:`async_url` and :func:`engines` are re-exported there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from swarmless.exceptions import InvalidArgument

__all__ = ["async_url", "engines"]


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
            pool_pre_ping=True,
            pool_timeout=connect_timeout * 2,
            connect_args={"timeout": connect_timeout, "command_timeout": 60},
        )
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


def _rollback_if_open(dbapi_conn: Any, _record: Any, state: Any) -> None:
    """A SQLite connection back in the pool: roll back what is left open, if anything."""
    if state.asyncio_safe and dbapi_conn.driver_connection.in_transaction:
        dbapi_conn.rollback()
