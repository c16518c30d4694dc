"""The store: SQLAlchemy Core over SQLite (one file, the default) or PostgreSQL.

Function specs and metadata are written at once. Invocation records of sync calls are
many and small, so they are written behind: :meth:`Store.record` only buffers (a later
record with the same id replaces an earlier one) and a background task upserts what is
buffered in one transaction every ``flush_interval`` (50 ms) or as soon as ``batch_size``
(500) records wait. Reads of one record see the buffer; :meth:`Store.save` is the durable
path (async calls, before they are accepted).

Nothing buffered is lost on purpose: a batch that fails because the database is busy or
away goes back to the buffer and is retried with backoff, and :meth:`Store.close` writes
what is left. Only a record the database refuses outright (a value out of range, say) is
dropped, alone, and logged in full, so one bad record cannot hold back the others.

SQLite runs in WAL mode with ``synchronous=NORMAL``: readers have their own connections
and never wait for the writer, and all writes go through one connection (a single writer),
in turn. PostgreSQL uses one pool for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Table, case, delete, event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from swarmless.exceptions import InvalidArgument, SwarmlessError
from swarmless.records import InvocationRecord, now_ms
from swarmless.spec import FunctionSpec
from swarmless.store.lease import LeaseOps
from swarmless.store.queue import GroupCommit, QueueOps
from swarmless.store.schema import functions, invocation_logs, invocations, meta, upgrade

__all__ = ["Store", "async_url"]

log = logging.getLogger("swarmless.store")

_Row = dict[str, Any]


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


def _sqlite_engines(url: URL, busy_timeout: float) -> tuple[AsyncEngine, AsyncEngine]:
    assert url.database is not None
    Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    args = {"timeout": busy_timeout}
    writer = create_async_engine(url, pool_size=1, max_overflow=0, connect_args=args)
    reader = create_async_engine(url, pool_size=4, max_overflow=4, connect_args=args)
    for engine, is_writer in ((writer, True), (reader, False)):

        def setup(dbapi_conn: Any, _record: Any, is_writer: bool = is_writer) -> None:
            cursor = dbapi_conn.cursor()
            if is_writer:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.close()

        event.listen(engine.sync_engine, "connect", setup)
    return writer, reader


def _refused(e: BaseException) -> bool:
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


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Database and driver errors leave the store as SwarmlessError (the cause attached)."""
    try:
        yield
    except (SQLAlchemyError, OSError, OverflowError) as e:
        raise SwarmlessError(f"store: {_describe(e)}") from e


def _describe(e: BaseException) -> str:
    """The driver's error in one line, without the SQL and parameters SQLAlchemy adds."""
    cause = e.orig if isinstance(e, DBAPIError) and e.orig is not None else e
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"


class Store(QueueOps, LeaseOps):
    """Function specs, invocation records and logs; open with :meth:`Store.open`::

    store = await Store.open("sqlite:///swarmless.db")
    rec = InvocationRecord(id=new_call_id(), function="echo", mode="oneshot")
    store.record(rec)                          # buffered, written within ~50 ms
    assert await store.get_invocation(rec.id) == rec   # reads see the buffer
    await store.close()                        # writes what is still buffered
    """

    def __init__(
        self,
        *,
        writer: AsyncEngine,
        reader: AsyncEngine,
        flush_interval: float,
        batch_size: int,
    ) -> None:
        self._writer = writer
        self._reader = reader
        #: ``sqlite`` or ``postgresql``.
        self.dialect: str = writer.dialect.name
        self._insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        self._interval = flush_interval
        self._batch_size = batch_size
        self._write_lock = asyncio.Lock()
        # Buffered rows by id, and the batch being written (still visible to readers).
        self._pending: dict[str, _Row] = {}
        self._pending_logs: dict[str, _Row] = {}
        self._inflight: dict[str, _Row] = {}
        self._inflight_logs: dict[str, _Row] = {}
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._stopping = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._group = GroupCommit(self)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        flush_interval: float = 0.05,
        batch_size: int = 500,
        busy_timeout: float = 5.0,
    ) -> Store:
        """Connect, bring the schema up to date and start the write-behind task.

        ``busy_timeout`` (SQLite) is how long a write waits for a lock held by another
        process before the batch is retried later.
        """
        u = async_url(url)
        if u.get_backend_name() == "sqlite":
            writer, reader = _sqlite_engines(u, busy_timeout)
        else:
            writer = reader = create_async_engine(u, pool_pre_ping=True)
        store = cls(
            writer=writer, reader=reader, flush_interval=flush_interval, batch_size=batch_size
        )
        try:
            async with store._write_lock, writer.begin() as conn:
                before, now = await conn.run_sync(upgrade)
        except Exception as e:
            await store._dispose()
            if isinstance(e, SwarmlessError):
                raise
            where = u.render_as_string(hide_password=True)
            raise SwarmlessError(f"cannot open the store at {where}: {_describe(e)}") from e
        if before != now:
            log.info("store: schema upgraded from version %d to %d", before, now)
        store._task = asyncio.create_task(store._write_behind(), name="swarmless-store-writer")
        return store

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the write-behind task, write everything still buffered, disconnect.

        A database that fails the last writes is retried for a few seconds; if it still
        fails, the error says how many records were not written.
        """
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self._group.close()
        self._stopping.set()
        self._wake.set()
        self._full.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("store: the write-behind task failed")
        try:
            for attempt in range(6):
                try:
                    await self.flush()
                    break
                except Exception as e:
                    if attempt == 5:
                        n = len(self._pending) + len(self._pending_logs)
                        raise SwarmlessError(f"store closed with {n} rows not written: {e}") from e
                    await asyncio.sleep(0.1 * 2**attempt)
        finally:
            await self._dispose()

    async def _dispose(self) -> None:
        await self._writer.dispose()
        if self._reader is not self._writer:
            await self._reader.dispose()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction on the writer, in turn with every other write."""
        with _translated():
            async with self._write_lock, self._writer.begin() as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        with _translated():
            async with self._reader.connect() as conn:
                yield conn

    def _upsert(self, table: Table, key: str) -> Any:
        ins = self._insert(table)
        names = [c.name for c in table.columns if c.name != key]
        return ins.on_conflict_do_update(
            index_elements=[key], set_={name: ins.excluded[name] for name in names}
        )

    # -- meta -------------------------------------------------------------------------

    async def get_meta(self, key: str) -> str | None:
        """A value of the ``meta`` table (``schema_version``, the gateway token, ...)."""
        async with self._read() as conn:
            value = await conn.scalar(select(meta.c.value).where(meta.c.key == key))
        return None if value is None else str(value)

    async def set_meta(self, key: str, value: str) -> None:
        async with self._write() as conn:
            await conn.execute(self._upsert(meta, "key"), [{"key": key, "value": value}])

    # -- functions --------------------------------------------------------------------

    async def put_function(self, spec: FunctionSpec) -> int:
        """Store a function's spec; returns its version: 1 when new, one more each time
        the spec changes (the same spec again keeps its version)."""
        now = now_ms()
        ins = self._insert(functions).values(
            name=spec.name,
            spec=json.dumps(spec.to_dict(), sort_keys=True),
            digest=spec.digest,
            version=1,
            created_at=now,
            updated_at=now,
        )
        changed = functions.c.digest != ins.excluded.digest
        stmt = ins.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "spec": ins.excluded.spec,
                "digest": ins.excluded.digest,
                "version": case((changed, functions.c.version + 1), else_=functions.c.version),
                "updated_at": case(
                    (changed, ins.excluded.updated_at), else_=functions.c.updated_at
                ),
            },
        ).returning(functions.c.version)
        async with self._write() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def get_function(self, name: str) -> tuple[FunctionSpec, int] | None:
        """A function's spec and version, or None."""
        query = select(functions.c.spec, functions.c.version).where(functions.c.name == name)
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else (FunctionSpec.from_dict(json.loads(row[0])), row[1])

    async def list_functions(self) -> list[tuple[FunctionSpec, int]]:
        """Every function with its version, by name."""
        query = select(functions.c.spec, functions.c.version).order_by(functions.c.name)
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return [(FunctionSpec.from_dict(json.loads(spec)), version) for spec, version in rows]

    async def delete_function(self, name: str) -> bool:
        """Forget a function (its invocation records stay); False if there was none."""
        async with self._write() as conn:
            done = await conn.execute(delete(functions).where(functions.c.name == name))
        return done.rowcount > 0

    # -- invocations ------------------------------------------------------------------

    def record(self, rec: InvocationRecord) -> None:
        """Buffer a record to be written soon (write-behind); returns at once.

        The record is copied now: change it and call again to record the change. Call it
        from the event loop's thread.
        """
        if self._closed:
            raise SwarmlessError("the store is closed")
        if not isinstance(rec, InvocationRecord) or not rec.id:
            raise InvalidArgument(f"not an invocation record with an id: {rec!r}")
        self._pending[rec.id] = rec.to_dict()
        self._wake.set()
        if len(self._pending) >= self._batch_size:
            self._full.set()

    async def save(self, rec: InvocationRecord) -> None:
        """Write a record now (upsert); it replaces a buffered one with the same id."""
        row = rec.to_dict()
        async with self._write_lock:
            older = self._pending.pop(rec.id, None)
            try:
                with _translated():
                    async with self._writer.begin() as conn:
                        await conn.execute(self._upsert(invocations, "id"), [row])
            except BaseException:
                if older is not None:
                    self._pending.setdefault(rec.id, older)
                raise

    async def flush(self) -> None:
        """Write everything buffered now."""
        async with self._write_lock:
            if not self._pending and not self._pending_logs:
                return
            self._inflight, self._pending = self._pending, {}
            self._inflight_logs, self._pending_logs = self._pending_logs, {}
            try:
                with _translated():
                    await self._write_batch(self._inflight, self._inflight_logs)
            except BaseException:
                # Back to the buffer; what was recorded meanwhile is newer and wins.
                for source, target in (
                    (self._inflight, self._pending),
                    (self._inflight_logs, self._pending_logs),
                ):
                    for key, row in source.items():
                        target.setdefault(key, row)
                raise
            finally:
                self._inflight, self._inflight_logs = {}, {}

    async def _write_batch(self, rows: dict[str, _Row], logs: dict[str, _Row]) -> None:
        """Upsert a batch in one transaction; rows written (or dropped) leave the dicts."""
        try:
            async with self._writer.begin() as conn:
                if rows:
                    await conn.execute(self._upsert(invocations, "id"), list(rows.values()))
                if logs:
                    await conn.execute(self._upsert(invocation_logs, "id"), list(logs.values()))
        except Exception as e:
            if not _refused(e):
                raise
            log.warning("store: the database refused a batch (%s); writing it row by row", e)
        else:
            rows.clear()
            logs.clear()
            return
        for table, batch in ((invocations, rows), (invocation_logs, logs)):
            for key, row in list(batch.items()):
                try:
                    async with self._writer.begin() as conn:
                        await conn.execute(self._upsert(table, "id"), [row])
                except Exception as e:
                    if not _refused(e):
                        raise
                    log.error("store: dropping a row the database refuses (%s): %r", e, row)
                del batch[key]

    async def _write_behind(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            if not self._stopping.is_set() and len(self._pending) < self._batch_size:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._interval)
            self._wake.clear()
            self._full.clear()
            if self._stopping.is_set():
                return  # close() writes what is left
            try:
                await self.flush()
                failures = 0
            except Exception as e:
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                log.warning(
                    "store: writing %d buffered rows failed (%s: %s); retrying in %.1fs",
                    len(self._pending) + len(self._pending_logs),
                    type(e).__name__,
                    e,
                    delay,
                    exc_info=failures == 1,
                )
                self._wake.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)

    async def get_invocation(self, call_id: str) -> InvocationRecord | None:
        """A record by id, buffered or written."""
        row = self._pending.get(call_id) or self._inflight.get(call_id)
        if row is None:
            query = select(invocations).where(invocations.c.id == call_id)
            async with self._read() as conn:
                found = (await conn.execute(query)).mappings().first()
            row = None if found is None else dict(found)
        return None if row is None else InvocationRecord.from_dict(row)

    async def list_invocations(
        self,
        *,
        function: str | None = None,
        status: str | None = None,
        parent: str | None = None,
        limit: int = 100,
    ) -> list[InvocationRecord]:
        """Records, newest first (by ``queued_at``, then id), optionally filtered."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgument(f"limit must be a positive integer, got {limit!r}")
        await self.flush()
        query = select(invocations)
        for column, value in (("function", function), ("status", status), ("parent", parent)):
            if value is not None:
                query = query.where(invocations.c[column] == value)
        query = query.order_by(invocations.c.queued_at.desc(), invocations.c.id.desc())
        async with self._read() as conn:
            rows = (await conn.execute(query.limit(limit))).mappings().all()
        return [InvocationRecord.from_dict(dict(row)) for row in rows]

    # -- logs -------------------------------------------------------------------------

    async def put_logs(self, call_id: str, stdout: bytes, stderr: bytes) -> None:
        """Keep the output of one invocation (written behind, like records)."""
        if self._closed:
            raise SwarmlessError("the store is closed")
        self._pending_logs[call_id] = {
            "id": call_id,
            "stdout": bytes(stdout),
            "stderr": bytes(stderr),
        }
        self._wake.set()

    async def get_logs(self, call_id: str) -> tuple[bytes, bytes] | None:
        """(stdout, stderr) of one invocation, buffered or written; None if none were kept."""
        row = self._pending_logs.get(call_id) or self._inflight_logs.get(call_id)
        if row is None:
            query = select(invocation_logs).where(invocation_logs.c.id == call_id)
            async with self._read() as conn:
                found = (await conn.execute(query)).mappings().first()
            row = None if found is None else dict(found)
        return None if row is None else (bytes(row["stdout"]), bytes(row["stderr"]))
