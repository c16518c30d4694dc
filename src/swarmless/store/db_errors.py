"""What a database error means: the database **refuses** the values (:func:`refused`:
retrying cannot help, a 500) or it is **unavailable** (:func:`unavailable`: away, locked,
full or too slow, a 503 that a retry resolves); :func:`describe` puts the driver's error
in one line. :class:`~swarmless.store.db.Database` turns one into the other (and
re-exports :func:`refused` and :func:`describe`). :func:`dead_connection` tells a
PostgreSQL connection that died (its error is a disconnect: see
:mod:`~swarmless.store.db_engines`).
"""

from __future__ import annotations

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

__all__ = ["dead_connection", "describe", "refused", "unavailable"]


def refused(e: BaseException) -> bool:
    """The database refuses these values (retrying cannot help), as opposed to a database
    that is busy, locked or away (retrying will). Drivers wrap a value they cannot encode
    differently, so the chain of causes is searched for the value error underneath."""
    if isinstance(e, DBAPIError) and e.connection_invalidated:
        return False
    cause: BaseException | None = e
    for _ in range(10):
        if cause is None:
            break
        if isinstance(cause, IntegrityError | DataError | TypeError | ValueError | OverflowError):
            return True
        cause = cause.__cause__ or getattr(cause, "orig", None)
    return False


#: PostgreSQL error classes (SQLSTATE) of a database that is away, shutting down,
#: starting, full or failing, and conflicts that a retry resolves (serialization, deadlock).
_PG_AWAY = ("08", "53", "57", "58", "40001", "40P01")


def unavailable(e: BaseException) -> bool:
    """The database is away, locked, full or too slow (as opposed to a bug of ours)."""
    if isinstance(e, DBAPIError) and e.connection_invalidated:
        return True
    if isinstance(e, OperationalError | InterfaceError | PoolTimeout | OSError | TimeoutError):
        return True
    cause: BaseException | None = e
    for _ in range(10):  # the driver's error is somewhere down the chain
        if cause is None:
            break
        if isinstance(cause, OSError | TimeoutError):
            return True
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if isinstance(state, str) and state.startswith(_PG_AWAY):
            return True
        cause = cause.__cause__ or getattr(cause, "orig", None)
    return False


#: SQLSTATEs of a PostgreSQL backend going away: terminated by an administrator
#: (``pg_terminate_backend``), the server crashing, the server starting or stopping.
_PG_GONE = ("57P01", "57P02", "57P03")
#: asyncpg's error of a connection closed in the middle of an operation (by name: the
#: store does not import asyncpg).
_CLOSED = "ConnectionDoesNotExistError"


def dead_connection(e: BaseException) -> bool:
    """The connection ``e`` happened on is dead (the server closed it, or is going away):
    a new connection may well work. Not a refusal, not a timeout."""
    cause: BaseException | None = e
    for _ in range(10):
        if cause is None:
            break
        name = type(cause).__name__
        state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
        if name == _CLOSED or (isinstance(state, str) and state.startswith(_PG_GONE)):
            return True
        if isinstance(cause, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
            return True
        if name == "InterfaceError" and "connection is closed" in str(cause):
            return True
        cause = cause.__cause__ or getattr(cause, "orig", None)
    return False


def describe(e: BaseException) -> str:
    """The driver's error in one line, without the SQL and parameters SQLAlchemy adds."""
    cause = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[0] if text else 'no detail'}"
