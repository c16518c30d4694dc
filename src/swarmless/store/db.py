"""The database under the store: engines, one writer at a time, and what a failure means.

:class:`Database` is the base of every part of :class:`~swarmless.store.Store` (the queue,
the leases, the write-behind buffer, retention): it holds the SQLAlchemy engines and gives
them :meth:`Database._write` (one transaction on the writer, in turn with every other
write) and :meth:`Database._read`. On SQLite, a small group of bulk writes is written on
the event loop's own thread (:meth:`Database._write_now`): handing it to the driver's thread
and back costs more than writing it, and the two threads take turns at the GIL.

Every wait is bounded: a write waits at most ``write_timeout`` for its turn, SQLite's
``busy_timeout`` for a lock another process holds, PostgreSQL ``connect_timeout`` for a
connection and ``command_timeout`` for a statement. A failure leaves the store as one of
two errors:

- the database **refuses** the values (a constraint, a value out of range, a type it
  cannot store): :class:`~swarmless.exceptions.SwarmlessError` (500), retrying cannot help;
- the database is **unavailable** (stopped, unreachable, locked, out of disk, too slow):
  :class:`~swarmless.exceptions.GatewayUnavailable` (503, ``retry_after``), and the store
  remembers it is down. While it is down, writes that can wait for their caller's retry
  (:meth:`Database._check_room`) fail at once instead of queueing behind a stalled
  writer; one is let through every :data:`PROBE_EVERY` seconds, and any write that
  succeeds (the write-behind buffer and the lease keep trying) marks it up again.

The engines are made in :mod:`~swarmless.store.db_engines` and errors are classified in
:mod:`~swarmless.store.db_errors`; :func:`async_url`, :func:`engines`, :func:`refused` and
:func:`describe` are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import operator
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy import Table, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from swarmless.exceptions import GatewayUnavailable, SwarmlessError
from swarmless.store.db_engines import async_url, engines
from swarmless.store.db_errors import dead_connection, describe, refused, unavailable
from swarmless.store.waits import Watchers

__all__ = [
    "DURABLE_RETRY",
    "PROBE_EVERY",
    "RETRY_AFTER",
    "Database",
    "async_url",
    "describe",
    "engines",
    "refused",
]

log = logging.getLogger("swarmless.store")

#: While the store is down, one write that can wait is let through this often (seconds).
PROBE_EVERY = 1.0
#: What a 503 of an unavailable store tells the client to wait before retrying (seconds).
RETRY_AFTER = 2.0
#: How long a write that must not be lost (an async call's outcome, leases given back)
#: is retried while the database is away, seconds.
DURABLE_RETRY = 60.0
#: Payload bytes a group of bulk writes may hold to be written on the event loop's thread
#: (SQLite, :meth:`Database._write_now`); a larger one is written in the driver's thread.
WRITE_NOW_BYTES = 256 << 10
#: Rows written on the event loop's thread (whose commits do not checkpoint the WAL) after
#: which the WAL is checkpointed, in the driver's thread: about the 1,000 pages after which
#: SQLite's own commits do (a row of a call takes about half a page of WAL).
CHECKPOINT_ROWS = 2_000

T = TypeVar("T")

#: Its name before the split (:mod:`swarmless.store.store` imports it from here).
_unavailable = unavailable


_WROTE = "swarmless.wrote"


class _NotAlone(Exception):
    """A write of :meth:`Database._write_alone` is not one bulk statement: nothing of it
    was sent, :meth:`Database._write` writes it instead."""


def _note_writes(
    conn: Any, _cursor: Any, _stmt: Any, _params: Any, context: Any, _many: Any
) -> None:
    """Mark the connection when a statement wrote rows (see :meth:`Database._write`)."""
    if context is not None and (context.isinsert or context.isupdate or context.isdelete):
        conn.info[_WROTE] = True


def _single(order: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The picker of a statement with one parameter, or none (a 1-tuple, or an empty one)."""
    if not order:
        return lambda _row: ()
    name = order[0]
    return lambda row: (row[name],)


@dataclasses.dataclass(frozen=True)
class _Bulk:
    """A statement PostgreSQL runs for many rows at once (:meth:`Database._unnest`): an
    insert of every column of ``table`` (an upsert on ``key``), (``update``) an update of
    the columns ``names[1:]`` of the row whose ``key`` is the rows' ``param``, or
    (``delete``) a delete of that row; either only where ``where`` (a condition on the
    row, as PostgreSQL SQL) holds too. Rows are taken by ``names``; rows of one ``param``
    are written once, the last one."""

    table: Table
    key: str | None
    param: str | None
    names: tuple[str, ...]
    update: bool = False
    delete: bool = False
    where: str = ""

    def types(self, dialect: Any) -> list[str]:
        """The SQL type of each of ``names`` (``param``'s: the ``key`` column's)."""
        columns = {c.name: c for c in self.table.columns}
        return [
            columns[str(self.key) if name == self.param else name].type.compile(dialect=dialect)
            for name in self.names
        ]

    def row_type(self, dialect: Any) -> str:
        """PostgreSQL: the name of the composite type of a row of this statement (its
        ``names`` and their types, in order): ``swarmless_<table>_<digest>``, so that a
        statement of another shape (another version of swarmless) has a type of its own
        and a type is never altered once made."""
        shape = "|".join(f"{n} {t}" for n, t in zip(self.names, self.types(dialect), strict=True))
        digest = hashlib.sha256(shape.encode()).hexdigest()[:12]
        return f"swarmless_{self.table.name[:30]}_{digest}"


class Database:
    """Engines, the write turn, and whether the database answers (the store's base)."""

    def __init__(self, *, writer: AsyncEngine, reader: AsyncEngine, write_timeout: float) -> None:
        self._writer = writer
        self._reader = reader
        event.listen(writer.sync_engine, "after_cursor_execute", _note_writes)
        #: ``sqlite`` or ``postgresql``.
        self.dialect: str = writer.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._write_lock = asyncio.Lock()
        self._write_timeout = write_timeout
        #: Why the database is down and since when (monotonic), None while it answers.
        self._down: tuple[str, float] | None = None
        self._last_try = 0.0
        self._closed = False
        #: Requests waiting for a call's record to change (result long-polls).
        self._watchers = Watchers()
        #: Upserts built once per table (building one costs more than running it), and the
        #: lease's (:meth:`LeaseOps._acquire_statement`).
        self._upserts: dict[tuple[str, str], Any] = {}
        #: Statements whose rows PostgreSQL takes in one statement (:meth:`_unnest`): an
        #: insert (the table, its conflict key or None) or an update by key
        #: (:meth:`_update_by_key`).
        self._bulk: dict[Any, _Bulk] = {}
        self._unnests: dict[tuple[Any, ...], tuple[str, list[_Bulk]]] = {}
        #: PostgreSQL: the bulk statements whose row type exists (:meth:`_make_row_types`),
        #: with what picks a row's values in the type's order.
        self._typed: dict[_Bulk, Callable[[dict[str, Any]], tuple[Any, ...]]] = {}
        #: SQLite: statements compiled once, with what picks a row's parameters in order.
        self._compiled: dict[Any, tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]] = {}
        #: SQLite: the transaction :meth:`_write_now` runs (its connection, the driver's).
        self._now: tuple[AsyncConnection, sqlite3.Connection] | None = None
        #: PostgreSQL, in :meth:`_gathered`: its connection, and the rows of each bulk
        #: statement run there so far (written at the block's end, in one statement).
        self._gather: tuple[AsyncConnection, dict[Any, list[dict[str, Any]]]] | None = None
        #: PostgreSQL, in :meth:`_write_alone`: its connection (nothing but bulk statements
        #: may run there).
        self._alone: AsyncConnection | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        #: Rows written by :meth:`_write_now` since its last checkpoint.
        self._unchecked = 0

    # -- health --------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while the last write failed because the database is unavailable."""
        return self._down is None

    @property
    def down_since(self) -> float | None:
        """When (``time.monotonic()``) the database stopped answering, or None."""
        return None if self._down is None else self._down[1]

    def _failed(self, why: str) -> None:
        if self._down is None:
            log.error("store: the database is unavailable (%s); retrying", why)
            self._down = (why, time.monotonic())
        else:
            self._down = (why, self._down[1])
        self._last_try = time.monotonic()

    def _answered(self) -> None:
        if self._down is not None:
            log.warning(
                "store: the database answers again (down %.1f s)", time.monotonic() - self._down[1]
            )
            self._down = None

    def _check_room(self) -> None:
        """Fail at once (503) while the database is known to be down, letting one write
        through every :data:`PROBE_EVERY` seconds to find out whether it is back."""
        if self._closed:
            raise GatewayUnavailable("the store is closed (the gateway is stopping)")
        if self._down is None:
            return
        now = time.monotonic()
        if now - self._last_try >= PROBE_EVERY:
            self._last_try = now
            return
        why, since = self._down
        raise GatewayUnavailable(
            f"the gateway's store has been unavailable for {now - since:.0f} s ({why}); "
            "retry later",
            retry_after=RETRY_AFTER,
        )

    async def _durably(self, what: str, write: Callable[[], Awaitable[T]]) -> T:
        """``write()``, retried (bounded: :data:`DURABLE_RETRY`) while the database is
        unavailable: what it writes must not be lost to an outage of a few seconds."""
        deadline = time.monotonic() + DURABLE_RETRY
        pause = 0.2
        for attempt in range(1000):
            try:
                return await write()
            except GatewayUnavailable as e:
                if self._closed or time.monotonic() + pause > deadline:
                    raise
                if attempt == 0:
                    log.warning("store: %s waits for the database (%s)", what, e.message)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """Database errors leave as SwarmlessError (refused, a bug) or GatewayUnavailable
        (the database is away: the store remembers it is down)."""
        try:
            yield
        except (SQLAlchemyError, OSError, OverflowError, TimeoutError) as e:
            raise self._as_error(e) from e

    def _as_error(self, e: Exception) -> Exception:
        """What a database error ``e`` means for the store's callers (see above)."""
        if isinstance(e, SwarmlessError) or not isinstance(
            e, SQLAlchemyError | OSError | OverflowError | TimeoutError
        ):
            return e
        if not refused(e) and unavailable(e):
            self._failed(describe(e))
            error: SwarmlessError = GatewayUnavailable(
                f"the gateway's store is unavailable ({describe(e)}); retry later",
                retry_after=RETRY_AFTER,
            )
        else:
            error = SwarmlessError(f"store: {describe(e)}")
        error.__cause__ = e
        return error

    # -- connections ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """The write turn, waited for at most ``write_timeout`` (then 503). A free turn is
        taken at once: ``wait_for`` runs the wait as a task of its own, which starts only
        at the event loop's next turn (milliseconds on a busy gateway, every write)."""
        try:
            if self._write_lock.locked():
                await asyncio.wait_for(self._write_lock.acquire(), self._write_timeout)
            else:
                await self._write_lock.acquire()  # free: returns without suspending
        except TimeoutError:
            raise GatewayUnavailable(
                f"the gateway's store did not take a write within {self._write_timeout:g} s "
                "(the database is slow or locked); retry later",
                retry_after=RETRY_AFTER,
            ) from None
        try:
            yield
        finally:
            self._write_lock.release()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction on the writer, in turn with every other write. A transaction
        that wrote a row and committed tells the store the database answers again (one
        that only read proves nothing: SQLite reads while another process locks writes)."""
        with self._translated():
            async with self._turn():
                async with self._begin(self._writer) as conn:
                    conn.info.pop(_WROTE, None)
                    yield conn
                    wrote = conn.info.pop(_WROTE, False)
                if wrote:
                    self._answered()

    async def _write_now(self, body: Callable[[AsyncConnection], Awaitable[None]]) -> bool:
        """SQLite: :meth:`_write` with ``body`` run on the event loop's own thread, False
        (nothing written) if it cannot be: another process holds the write lock (then
        :meth:`_write` waits for it, ``busy_timeout``, in the driver's thread), another
        database, or a driver of another shape.

        No wait happens on the loop's thread: BEGIN IMMEDIATE is tried once (no busy
        wait), and the commit does not checkpoint the WAL (its fsyncs): a checkpoint follows
        in the driver's thread (:meth:`_checkpoint`). ``body``'s bulk statements
        (:meth:`_executemany_all`) run on the driver's connection directly; only the ones
        given ``conn`` do. Errors are the driver's, translated as :meth:`_write` does."""
        if self.dialect != "sqlite":
            return False
        with self._translated():
            async with self._turn(), _connected(self._writer) as conn:
                record = await conn.get_raw_connection()
                raw = getattr(record.driver_connection, "_conn", None)
                if not isinstance(raw, sqlite3.Connection):
                    return False
                try:
                    if not _begin_now(raw, record.info):
                        return False
                    self._now = (conn, raw)
                    try:
                        await body(conn)
                        _commit_now(raw, record.info)
                    finally:
                        self._now = None
                        if raw.in_transaction:
                            raw.rollback()
                except sqlite3.Error as e:
                    raise DBAPIError.instance(None, None, e, sqlite3.Error) from e
        self._answered()
        self._checkpoint_soon()
        return True

    async def _write_alone(self, body: Callable[[AsyncConnection], Awaitable[None]]) -> bool:
        """PostgreSQL: :meth:`_write` of ``body`` as one statement sent alone, outside any
        transaction; False if it was not written (then :meth:`_write` writes it, in a
        transaction): on SQLite, or when ``body`` runs a statement other than the bulk
        ones (nothing was sent), or when the connection was dead and the statement was
        not written (below).

        ``body``'s bulk statements (:meth:`_executemany_all`) are gathered, as in
        :meth:`_gathered`, into the one statement of :meth:`_unnest`. A statement is atomic
        by itself (the server runs it in a transaction of its own, and commits it as
        durably as a COMMIT), so it needs no BEGIN and no COMMIT: one round trip instead
        of three, and none of SQLAlchemy's transaction work on the event loop.

        A transaction begins with BEGIN, which finds a pooled connection that died unseen
        (:meth:`_begin_pg` begins again on a new one). Here the statement itself finds
        it, and whether the server ran it first is not known: :meth:`_was_written` reads
        it back on a new connection. Written: True; not: False, written again. Any other
        error is :meth:`_write`'s (the outcome of a statement that failed otherwise is as
        unknown as that of a failed COMMIT, and it is not sent again)."""
        if self.dialect == "sqlite":
            return False
        try:
            with self._translated():
                async with self._turn(), _connected(self._writer) as conn:
                    if self._gather is not None:  # the write-behind gathers: in a transaction
                        return False
                    gathered: dict[Any, list[dict[str, Any]]] = {}
                    self._gather, self._alone = (conn, gathered), conn
                    try:
                        await body(conn)
                    finally:
                        self._gather = self._alone = None
                    if conn.in_transaction():  # a statement ran through SQLAlchemy
                        await conn.rollback()  # (unwritten): all of it in a transaction
                        return False
                    if not gathered:
                        return True
                    work = list(gathered.items())
                    try:
                        await self._executemany_pg(conn, work, alone=True)
                    except Exception as e:
                        if not dead_connection(e):
                            raise
                        await conn.invalidate()
                        dead = describe(e)
                    else:
                        self._answered()
                        return True
                written = await self._was_written(work)
        except _NotAlone:
            return False
        log.info(
            "store: a pooled connection was dead (%s); its statement was %s", dead,
            "written" if written else "not written: writing it in a transaction",
        )  # fmt: skip
        if written:
            self._answered()
        return written

    async def _was_written(self, work: list[tuple[Any, list[dict[str, Any]]]]) -> bool:
        """Whether the one statement of ``work`` (:meth:`_write_alone`) was written: it is
        atomic, so one row it inserts tells (the first of the first insert, by its
        primary key). One that inserts nothing is written again either way: its upserts,
        and updates and deletes by key, write the same thing twice as once."""
        for stmt, rows in work:
            form = self._bulk[stmt]
            if form.update or form.delete or form.key is not None or not rows:
                continue
            [key] = form.table.primary_key.columns
            query = select(func.count()).select_from(form.table).where(key == rows[0][key.name])
            async with self._read() as conn:
                return bool((await conn.execute(query)).scalar_one())
        return False

    def _checkpoint_soon(self) -> None:
        """Checkpoint (in the background) once :data:`CHECKPOINT_ROWS` were written on the
        loop's thread: the WAL holds at most about that many rows beyond the last one
        (fewer when the writes stop: SQLite checkpoints at the last close)."""
        if self._unchecked >= CHECKPOINT_ROWS and (
            self._checkpointing is None or self._checkpointing.done()
        ):
            self._unchecked = 0
            self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Checkpoint the WAL on the writer, in its thread, in turn with the writes: a
        checkpoint that ran beside writes would never catch up with them, and the WAL
        would never start over (it would grow with every write). PASSIVE: it does not wait
        for readers. Housekeeping: a failure is tried again after the next
        :data:`CHECKPOINT_ROWS` rows."""
        try:
            async with self._turn(), self._writer.connect() as conn:
                await conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except (SwarmlessError, SQLAlchemyError, OSError) as e:
            log.debug("store: WAL checkpoint failed: %s", e)

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with self._translated():
            if self.dialect == "sqlite":
                async with self._reader.connect() as conn:
                    yield conn
            else:
                async with self._begin_pg(self._reader) as conn:
                    yield conn

    def _begin(
        self, engine: AsyncEngine
    ) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """``engine.begin()``: a transaction, committed at the end (rolled back on an
        error; its connection closed in line, :func:`_connected`); on PostgreSQL begun
        again once if the pooled connection was dead."""
        if self.dialect == "sqlite":
            return _begun(engine)
        return self._begin_pg(engine)

    @contextlib.asynccontextmanager
    async def _begin_pg(self, engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
        """PostgreSQL's :meth:`_begin`. A connection that died while idle in the pool fails
        its BEGIN (sent as the transaction begins, see :mod:`~swarmless.store.db_engines`)
        as a disconnect: it is invalidated and the transaction begun once more on a fresh
        connection. Nothing was sent before BEGIN, so nothing can happen twice. Anything
        that fails after BEGIN succeeded (a statement, COMMIT: its outcome may be unknown)
        is never retried here: it leaves as it came."""
        for attempt in (1, 2):
            begun = False
            try:
                async with _begun(engine) as conn:
                    begun = True
                    yield conn
                return
            except DBAPIError as e:
                if begun or attempt == 2 or not e.connection_invalidated:
                    raise
                log.info(
                    "store: a pooled connection was dead (%s); beginning on a new one", describe(e)
                )
        raise AssertionError("unreachable")  # pragma: no cover

    def _upsert(self, table: Table, key: str) -> Any:
        """``INSERT ... ON CONFLICT (key) DO UPDATE`` every other column of ``table``."""
        found = self._upserts.get((table.name, key))
        if found is None:
            ins = self._insert(table)
            names = [c.name for c in table.columns if c.name != key]
            found = self._upserts[(table.name, key)] = ins.on_conflict_do_update(
                index_elements=[key], set_={name: ins.excluded[name] for name in names}
            )
            self._bulk[found] = _Bulk(table, key, key, tuple(c.name for c in table.columns))
        return found

    def _insert_all(self, table: Table) -> Any:
        """``INSERT`` of every column of ``table`` (written with :meth:`_executemany`, its
        rows go in one statement on PostgreSQL)."""
        found = self._upserts.get((table.name, ""))
        if found is None:
            found = self._upserts[(table.name, "")] = table.insert()
            self._bulk[found] = _Bulk(table, None, None, tuple(c.name for c in table.columns))
        return found

    def _update_by_key(
        self, stmt: Any, table: Table, key: str, param: str, where: Any = None
    ) -> None:
        """Register ``stmt``, ``UPDATE table SET col = :col ... WHERE key = :param`` (its
        rows give ``param`` and every column it sets, by name; ``AND where`` too, when the
        statement has that condition besides): on PostgreSQL its rows go in one statement
        (:meth:`_unnest`)."""
        sets = tuple(name for name in stmt.compile().params if name != param)
        if param in table.c or key not in table.c or any(name not in table.c for name in sets):
            raise ValueError(f"not an update of {table.name} by {key} = :{param}: {sets}")
        self._bulk[stmt] = _Bulk(
            table, key, param, (param, *sets), update=True, where=self._pg_sql(where)
        )

    def _delete_by_key(
        self, stmt: Any, table: Table, key: str, param: str, where: Any = None
    ) -> None:
        """Register ``stmt``, ``DELETE FROM table WHERE key = :param`` (``AND where`` too,
        when the statement has that condition besides; its rows give ``param``): on
        PostgreSQL its rows go in one statement (:meth:`_unnest`)."""
        if set(stmt.compile().params) != {param} or param in table.c or key not in table.c:
            raise ValueError(f"not a delete from {table.name} by {key} = :{param}")
        self._bulk[stmt] = _Bulk(
            table, key, param, (param,), delete=True, where=self._pg_sql(where)
        )

    async def _make_row_types(self) -> None:
        """PostgreSQL: the composite type of a row of each bulk statement registered so far
        (:meth:`_Bulk.row_type`), made if it does not exist yet (by whichever store opens
        first; never altered). Their rows then go to the driver as one array of rows, not
        one array per column: asyncpg checks every element of an array for being an array
        itself (a Python-level ``isinstance`` against an ABC), so a row costs one check, not
        one per value: a call's writes took a quarter less of the client's CPU and a fifth
        less of the server's (``bench/store_writes.py``: 163 -> 123 and 113 -> 88 us). A
        type that cannot be made (no right to create types) leaves its statement on arrays
        per column, as before: logged, not fatal."""
        if self.dialect != "postgresql":
            return
        dialect = self._writer.dialect
        quote = dialect.identifier_preparer.quote
        made: set[str] = set()
        for form in set(self._bulk.values()):
            name = form.row_type(dialect)
            try:
                if name not in made:
                    shape = zip(form.names, form.types(dialect), strict=True)
                    attributes = ", ".join(f"{quote(n)} {t}" for n, t in shape)
                    async with self._turn(), self._writer.begin() as conn:
                        await conn.exec_driver_sql(
                            f"DO $$ BEGIN CREATE TYPE {quote(name)} AS ({attributes});"
                            " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;"
                            " END $$"
                        )
                    made.add(name)
            except SQLAlchemyError as e:
                log.warning("store: no row type %s (%s): its rows go as arrays per column", name, e)
                continue
            self._typed[form] = (
                operator.itemgetter(*form.names) if len(form.names) > 1 else _single(form.names)
            )
        self._unnests.clear()

    @staticmethod
    def _pg_sql(where: Any) -> str:
        """A condition without parameters as PostgreSQL's SQL ("" for none)."""
        if where is None:
            return ""
        return str(where.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]

    def _unnest(self, stmts: Sequence[Any]) -> tuple[str, list[_Bulk]]:
        """PostgreSQL: the rows of ``stmts`` (each an insert, an upsert or an update by key
        registered for it) as one statement: ``INSERT ... SELECT * FROM unnest($1::type[],
        ...)`` (``UPDATE ... FROM unnest(...)``, ``DELETE ... USING unnest(...)``): one
        array of rows of the statement's row type (:meth:`_make_row_types`), or without
        one, one array per column; the statements after the first in ``WITH`` clauses of
        the last.
        One plan and one round trip for any number of rows and statements, where
        ``executemany`` runs each statement once per row, and each in a round trip of its
        own. Their rows are disjoint (different tables, or different rows of one: a call's
        queue row is dead, or done and kept for its key, or deleted, never two of them)."""
        ident = tuple(stmts)
        found = self._unnests.get(ident)
        if found is None:
            dialect = self._writer.dialect
            quote = dialect.identifier_preparer.quote
            parts: list[str] = []
            forms = [self._bulk[stmt] for stmt in stmts]
            n = 0
            for form in forms:
                table = dialect.identifier_preparer.format_table(form.table)
                names = [quote(name) for name in form.names]
                if form in self._typed:  # one array of rows: its columns by the type's names
                    n += 1
                    source = f"unnest(${n}::{quote(form.row_type(dialect))}[])"
                    alias = "u"
                else:  # one array per column
                    arrays = []
                    for sql_type in form.types(dialect):
                        n += 1
                        arrays.append(f"${n}::{sql_type}[]")
                    source = f"unnest({', '.join(arrays)})"
                    alias = f"u({', '.join(names)})"
                if form.update or form.delete:
                    assert form.key is not None
                    rows = f"{source} AS {alias}"
                    match = f"{table}.{quote(form.key)} = u.{names[0]}"
                    if form.where:
                        match += f" AND {form.where}"
                    if form.delete:
                        parts.append(f"DELETE FROM {table} USING {rows} WHERE {match}")
                        continue
                    sets = ", ".join(f"{name} = u.{name}" for name in names[1:])
                    parts.append(f"UPDATE {table} SET {sets} FROM {rows} WHERE {match}")
                    continue
                sql = f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM {source}"
                if form.key is not None:
                    others = [name for name in names if name != quote(form.key)]
                    sets = ", ".join(f"{name} = excluded.{name}" for name in others)
                    sql += f" ON CONFLICT ({quote(form.key)}) DO UPDATE SET {sets}"
                parts.append(sql)
            sql = parts[-1]
            if len(parts) > 1:
                withs = ", ".join(f"w{i} AS ({part})" for i, part in enumerate(parts[:-1]))
                sql = f"WITH {withs} {sql}"
            found = self._unnests[ident] = (sql, forms)
        return found

    @contextlib.asynccontextmanager
    async def _gathered(self, conn: AsyncConnection) -> AsyncIterator[None]:
        """PostgreSQL: the bulk statements (:meth:`_executemany_all`, registered ones) run
        on ``conn`` in the block are written at its end, all in one statement
        (:meth:`_unnest`; the rows of one statement together): one round trip for the ops
        of a group commit, not one per op. Any other statement run meanwhile writes what
        was gathered first. Their rows must be disjoint (:meth:`_unnest`): accepted calls
        and outcomes of other calls are."""
        if self.dialect == "sqlite" or self._gather is not None:
            yield
            return
        self._gather = (conn, {})
        try:
            yield
            await self._flush_gathered()
        finally:
            self._gather = None

    async def _flush_gathered(self) -> None:
        gather = self._gather
        if gather is None or not gather[1]:
            return
        work = list(gather[1].items())
        gather[1].clear()
        await self._executemany_pg(gather[0], work)

    async def _executemany(
        self, conn: AsyncConnection, stmt: Any, rows: list[dict[str, Any]]
    ) -> None:
        """``stmt`` once per row, in ``conn``'s transaction, straight through the driver
        with no per-row work of SQLAlchemy (values as the driver takes them: str, int,
        float, bool, bytes, None): on SQLite one trip to aiosqlite's thread, on PostgreSQL
        asyncpg's own ``executemany`` (the rows pipelined in one exchange)."""
        await self._executemany_all(conn, [(stmt, rows)])

    async def _executemany_all(
        self, conn: AsyncConnection, work: list[tuple[Any, list[dict[str, Any]]]]
    ) -> None:
        """:meth:`_executemany` of each (statement, rows) of ``work`` in turn; on SQLite
        all of them in one trip to aiosqlite's thread (not one trip each)."""
        work = [(stmt, rows) for stmt, rows in work if rows]
        if not work:
            return
        if self.dialect != "sqlite":
            bulk = all(stmt in self._bulk for stmt, _ in work)
            gather = self._gather
            gathered = gather[1] if gather is not None and gather[0] is conn else None
            if gathered is not None and bulk:
                for stmt, rows in work:
                    gathered.setdefault(stmt, []).extend(rows)
                return
            if self._alone is conn:
                raise _NotAlone  # another statement: written in a transaction instead
            if gathered is not None:
                await self._flush_gathered()  # in the order they were run
            if len(work) > 1 and bulk:
                await self._executemany_pg(conn, work)
                return
            for stmt, rows in work:
                await self._executemany_pg(conn, [(stmt, rows)])
            return
        batches = []
        for stmt, rows in work:
            sql, pick = self._compile(stmt)
            batches.append((sql, [pick(row) for row in rows]))
        now = self._now
        if now is not None and now[0] is conn:  # in _write_now: here, on the loop's thread
            for sql, params in batches:
                now[1].executemany(sql, params)
                self._unchecked += len(params)
            return

        async def run(driver: Any) -> None:
            raw = getattr(driver, "_conn", None)
            execute = getattr(driver, "_execute", None)
            if raw is None or execute is None:  # another aiosqlite: a trip each
                for sql, params in batches:
                    await driver.executemany(sql, params)
                return

            def all_of_them() -> None:
                for sql, params in batches:
                    raw.executemany(sql, params)

            await execute(all_of_them)

        await self._on_driver(conn, run)
        self._wrote(conn)

    def _compile(self, stmt: Any) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]:
        """``stmt`` compiled once for the writer's dialect, with what picks a row's values
        in the statement's order (in C, always a tuple)."""
        compiled = self._compiled.get(stmt)
        if compiled is None:
            done = stmt.compile(dialect=self._writer.dialect)
            order = tuple(done.positiontup or ())
            pick = operator.itemgetter(*order) if len(order) > 1 else _single(order)
            compiled = self._compiled[stmt] = (str(done), pick)
        return compiled

    async def _executemany_pg(
        self,
        conn: AsyncConnection,
        work: list[tuple[Any, list[dict[str, Any]]]],
        *,
        alone: bool = False,
    ) -> None:
        """PostgreSQL: each (statement, rows) of ``work`` once per row through asyncpg's
        ``executemany``, or (several statements, or many rows of one, every statement
        registered: :meth:`_upsert`, :meth:`_insert_all`, :meth:`_update_by_key`,
        :meth:`_delete_by_key`) all in
        one statement, :meth:`_unnest`; in the transaction of SQLAlchemy's adapter (begun
        first if it was not yet: the adapter begins lazily, at its first statement), under
        its lock; asyncpg's errors raised as SQLAlchemy's. An adapter without those parts
        (another SQLAlchemy version) goes through SQLAlchemy. ``alone``: all of ``work`` in
        one statement sent outside any transaction (:meth:`_write_alone`)."""
        adapter: Any = (await conn.get_raw_connection()).dbapi_connection
        driver = getattr(adapter, "_connection", None)
        mutex = getattr(adapter, "_execute_mutex", None)
        if (
            mutex is None
            or driver is None
            or not hasattr(adapter, "_transaction")
            or not hasattr(adapter, "_start_transaction")
            or not hasattr(driver, "executemany")
        ):
            if alone:
                raise _NotAlone  # another adapter: in a transaction, through SQLAlchemy
            for stmt, rows in work:
                await conn.execute(stmt, rows)
            return
        stmt, rows = work[0]
        bulk = alone or len(work) > 1 or (len(rows) > 1 and stmt in self._bulk)
        arrays: list[list[Any]] = []
        if bulk:
            sql, forms = self._unnest([stmt for stmt, _ in work])
            for form, (_, rows) in zip(forms, work, strict=True):
                if form.param is not None:  # one row per key, the last (as executemany)
                    rows = list({row[form.param]: row for row in rows}.values())
                pick = self._typed.get(form)
                if pick is not None:
                    arrays.append([pick(row) for row in rows])
                else:
                    arrays.extend([row[name] for row in rows] for name in form.names)
        else:
            sql, pick = self._compile(stmt)
            params = [pick(row) for row in rows]
        async with mutex:
            try:
                if adapter._transaction is None and not alone:
                    await adapter._start_transaction()
                if bulk:
                    await driver.execute(sql, *arrays)
                else:
                    await driver.executemany(sql, params)
            except Exception as e:
                base = getattr(getattr(adapter, "dbapi", None), "Error", None)
                try:
                    adapter._handle_exception(e)  # the dialect's own exception classes
                except Exception as translated:
                    if base is None or not isinstance(translated, base):
                        raise  # not the database's (OSError, a timeout): as it is
                    raise DBAPIError.instance(sql, None, translated, base) from translated
                raise
        self._wrote(conn)

    async def _fetch(self, conn: AsyncConnection, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """SQLite: the rows of ``sql`` run straight through the driver (one trip to its
        thread), in ``conn``'s transaction."""

        async def fetch(driver: Any) -> list[Any]:
            return list(await driver.execute_fetchall(sql, params))

        return await self._on_driver(conn, fetch)

    @staticmethod
    def _wrote(conn: AsyncConnection) -> None:
        """Mark ``conn``'s transaction as one that wrote (for statements run on the driver)."""
        conn.info[_WROTE] = True

    async def _on_driver(self, conn: AsyncConnection, call: Callable[[Any], Awaitable[T]]) -> T:
        """``call(driver connection)`` (aiosqlite) in ``conn``'s transaction; the driver's
        errors raised as SQLAlchemy's, as if SQLAlchemy had run the statement."""
        driver = (await conn.get_raw_connection()).driver_connection
        try:
            return await call(driver)
        except sqlite3.Error as e:
            raise DBAPIError.instance(None, None, e, sqlite3.Error) from e

    async def _dispose(self) -> None:
        if self._checkpointing is not None:
            self._checkpointing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpointing
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()


@contextlib.asynccontextmanager
async def _connected(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """``engine.connect()``, closed in the caller's task when no transaction is left open.

    SQLAlchemy's ``async with`` closes in a task of its own (shielded from cancellation),
    which a busy event loop runs a turn later and answers a turn after that: on a busy
    gateway, milliseconds added to every transaction before its callers hear it is in,
    with the write turn held meanwhile (a group commit of the async drain of
    ``bench/async.py`` on SQLite: 11.7 ms median from its window to its callers' answer,
    3.0 ms with this). A connection whose transaction ended (committed or rolled back) goes
    back to the pool without waiting for anything: the SQLite writer's pool rolls back only
    a transaction still open (:func:`~swarmless.store.db_engines._rollback_if_open`), and
    the asyncpg adapter's rollback of a transaction that has ended sends nothing. So such
    a close cannot be cancelled halfway; one with a transaction still open (an error, a
    cancellation in the middle of one) closes as SQLAlchemy's does."""
    conn = engine.connect()
    await conn.start()
    try:
        yield conn
    finally:
        sync = conn.sync_connection
        if sync is not None and sync.in_transaction():
            await conn.__aexit__(None, None, None)
        else:
            await conn.close()


@contextlib.asynccontextmanager
async def _begun(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """``engine.begin()`` on a connection of :func:`_connected`."""
    async with _connected(engine) as conn, conn.begin():
        yield conn


def _begin_now(raw: sqlite3.Connection, info: dict[Any, Any]) -> bool:
    """BEGIN IMMEDIATE on ``raw`` without a busy wait: False if another connection holds
    the write lock. ``info`` (the pooled connection's) keeps its busy timeout and WAL
    auto-checkpoint, read once."""
    if "swarmless.busy_ms" not in info:
        info["swarmless.busy_ms"] = int(raw.execute("PRAGMA busy_timeout").fetchone()[0])
        info["swarmless.autocheckpoint"] = int(
            raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        )
    if raw.in_transaction:  # left open (the pool rolls back on return): not ours
        raw.rollback()
    raw.execute("PRAGMA busy_timeout=0")
    try:
        raw.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        if e.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
            return False
        raise
    finally:
        raw.execute(f"PRAGMA busy_timeout={info['swarmless.busy_ms']}")
    return True


def _commit_now(raw: sqlite3.Connection, info: dict[Any, Any]) -> None:
    """COMMIT without the WAL checkpoint SQLite would otherwise run in it (see
    :meth:`Database._checkpoint`)."""
    raw.execute("PRAGMA wal_autocheckpoint=0")
    try:
        raw.commit()
    finally:
        raw.execute(f"PRAGMA wal_autocheckpoint={info['swarmless.autocheckpoint']}")
