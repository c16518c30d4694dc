"""The store: SQLAlchemy Core over SQLite (one file, the default) or PostgreSQL.

:class:`Store` is made of parts, one module each: the database and what its failures
mean (:mod:`.db`), the write-behind buffer of records and logs (:mod:`.writebehind`), the
durable async queue (:mod:`.queue`, its group commit :mod:`.group`), the leases of
replicated gateways (:mod:`.lease`), the outcome of calls' child containers
(:mod:`.children`), retention (:mod:`.retention`) and the waits for a
call's result (:mod:`.waits`). This module opens and closes it and holds what is left:
metadata, function specs and reading records and logs.

Function specs and metadata are written at once; records of sync calls are written
behind (:meth:`Store.record`); :meth:`Store.save` is the durable path of one record.

SQLite runs in WAL mode with ``synchronous=NORMAL``: readers have their own connections
and never wait for the writer, and all writes go through one connection (a single writer),
in turn. PostgreSQL uses one pool for both.

An outage of the database never ends the gateway: calls that need the store get 503
(:class:`~swarmless.exceptions.GatewayUnavailable`) while sync calls go on, records wait
in the bounded buffer, and the store finds the database again by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from types import TracebackType

from sqlalchemy import case, delete, select

from swarmless.exceptions import GatewayUnavailable, InvalidArgument, SwarmlessError
from swarmless.records import InvocationRecord, now_ms
from swarmless.spec import FunctionSpec
from swarmless.store.children import ChildrenOps
from swarmless.store.db import RETRY_AFTER, async_url, describe, engines, refused
from swarmless.store.db import _unavailable as unavailable
from swarmless.store.lease import LeaseOps
from swarmless.store.queue import QueueOps
from swarmless.store.retention import RetentionOps
from swarmless.store.schema import (
    functions,
    invocation_logs,
    invocation_results,
    invocations,
    meta,
    upgrade,
)
from swarmless.store.waits import Change
from swarmless.store.writebehind import WriteBehind

__all__ = ["Store", "StoreStats", "async_url"]

log = logging.getLogger("swarmless.store")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoreStats:
    """How the store is doing (the gateway's metrics)."""

    available: bool
    buffered: int
    lost_records: int
    lost_logs: int
    waiting_writes: int
    watchers: int
    swept: dict[str, int]


class Store(QueueOps, LeaseOps, RetentionOps, ChildrenOps, WriteBehind):
    """Function specs, invocation records and logs; open with :meth:`Store.open`::

    store = await Store.open("sqlite:///swarmless.db")
    rec = InvocationRecord(id=new_call_id(), function="echo", mode="oneshot")
    store.record(rec)                          # buffered, written within ~50 ms
    assert await store.get_invocation(rec.id) == rec   # reads see the buffer
    await store.close()                        # writes what is still buffered
    """

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        flush_interval: float = 0.05,
        batch_size: int = 500,
        busy_timeout: float = 1.0,
        write_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_buffered: int = 100_000,
        max_buffered_log_bytes: int = 64 << 20,
    ) -> Store:
        """Connect, bring the schema up to date and start the write-behind task.

        ``busy_timeout`` (SQLite) is how long a write waits for a lock held by another
        process, ``write_timeout`` how long it waits for its turn on the writer,
        ``connect_timeout`` (PostgreSQL) for a connection: past them, a 503. The
        write-behind buffer holds at most ``max_buffered`` records and
        ``max_buffered_log_bytes`` of logs.

        A database that is away, locked or full raises
        :class:`~swarmless.exceptions.GatewayUnavailable` (try again later: the gateway
        does, see :meth:`swarmless.gateway.app.Gateway.start`); one that refuses (a schema
        newer than this swarmless, a wrong password) :class:`SwarmlessError`.
        """
        u = async_url(url)
        writer, reader = engines(u, busy_timeout=busy_timeout, connect_timeout=connect_timeout)
        store = cls(writer=writer, reader=reader, write_timeout=write_timeout)
        store._init_buffer(
            flush_interval=flush_interval,
            batch_size=batch_size,
            max_records=max_buffered,
            max_log_bytes=max_buffered_log_bytes,
        )
        store._init_queue()
        store._init_retention()
        try:
            async with store._turn(), writer.begin() as conn:
                before, now = await conn.run_sync(upgrade)
        except Exception as e:
            await store._dispose()
            if isinstance(e, SwarmlessError):
                raise
            where = u.render_as_string(hide_password=True)
            message = f"cannot open the store at {where}: {describe(e)}"
            if not refused(e) and unavailable(e):  # away, locked, full: it may come back
                raise GatewayUnavailable(message, retry_after=RETRY_AFTER) from e
            raise SwarmlessError(message) from e
        if before != now:
            log.info("store: schema upgraded from version %d to %d", before, now)
        # Every statement written in bulk is registered now, so that its row type is made
        # before the first write (PostgreSQL: ``Database._make_row_types``).
        for table in (invocations, invocation_logs, invocation_results):
            store._upsert(table, "id")
        try:
            await store._make_row_types()
        except Exception:
            await store._dispose()
            raise
        store._start_buffer()
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
        try:
            await self._stop_buffer()
        finally:
            await self._dispose()

    def stats(self) -> StoreStats:
        """How the store is doing now (for metrics)."""
        return StoreStats(
            available=self.available,
            buffered=self.buffered,
            lost_records=self.lost_records,
            lost_logs=self.lost_logs,
            waiting_writes=self._group.waiting,
            watchers=len(self._watchers),
            swept=dict(self.swept),
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
        out: list[tuple[FunctionSpec, int]] = []
        for spec, version in rows:
            try:
                out.append((FunctionSpec.from_dict(json.loads(spec)), version))
            except (SwarmlessError, ValueError) as e:
                # A spec stored by an older swarmless that today's rules refuse: the gateway
                # still starts; the function is left out, and the log says how to mend it.
                name = _stored_name(spec)
                log.error(
                    "function %r is stored with a spec that is no longer valid (%s); it is "
                    "not served: deploy it again with a valid spec, or remove it",
                    name,
                    e,
                )
        return out

    async def delete_function(self, name: str) -> bool:
        """Forget a function (its invocation records stay); False if there was none."""
        async with self._write() as conn:
            done = await conn.execute(delete(functions).where(functions.c.name == name))
        return done.rowcount > 0

    # -- invocations ------------------------------------------------------------------

    async def save(self, rec: InvocationRecord) -> None:
        """Write a record now (upsert); it replaces a buffered one with the same id."""
        row = rec.to_dict()
        async with self._turn():
            older = self._pending.pop(rec.id, None)
            try:
                with self._translated():
                    async with self._begin(self._writer) as conn:
                        await conn.execute(self._upsert(invocations, "id"), [row])
                self._answered()
            except BaseException:
                if older is not None:
                    self._pending.setdefault(rec.id, older)
                raise
        self._watchers.changed(rec.id)

    async def get_invocation(self, call_id: str) -> InvocationRecord | None:
        """A record by id, buffered or written."""
        row = self._buffered_record(call_id)
        if row is None:
            query = select(invocations).where(invocations.c.id == call_id)
            async with self._read() as conn:
                found = (await conn.execute(query)).mappings().first()
            row = None if found is None else dict(found)
        return None if row is None else InvocationRecord.from_dict(row)

    @contextlib.contextmanager
    def watch(self, call_id: str) -> Iterator[Change]:
        """Wait for call ``call_id``'s record to change, in memory (no polling)::

        with store.watch(call_id) as changed:
            while (await store.get_invocation(call_id)).status not in FINAL:
                await changed.wait(deadline)
        """
        with self._watchers.watch(call_id) as change:
            yield change

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
        # What is buffered first, if the database takes it at once (it may be away: then
        # the list is what it has).
        with contextlib.suppress(SwarmlessError, TimeoutError):
            await asyncio.wait_for(self.flush(), 1.0)
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
        self.keep_logs(call_id, stdout, stderr)

    async def get_logs(self, call_id: str) -> tuple[bytes, bytes] | None:
        """(stdout, stderr) of one invocation, buffered or written; None if none were kept."""
        row = self._buffered_logs(call_id)
        if row is None:
            query = select(invocation_logs).where(invocation_logs.c.id == call_id)
            async with self._read() as conn:
                found = (await conn.execute(query)).mappings().first()
            row = None if found is None else dict(found)
        return None if row is None else (bytes(row["stdout"]), bytes(row["stderr"]))


def _stored_name(spec: str) -> str:
    """The name in a stored spec's JSON, for messages ("?" if it has none)."""
    try:
        return str(json.loads(spec).get("name", "?"))
    except (ValueError, AttributeError):
        return "?"
