"""The durable queue of async calls, part of :class:`swarmless.store.Store`.

Life of a row in ``async_queue`` (its record in ``invocations`` follows along)::

    enqueue ──> queued ──claim──> leased ──complete──> done   (record: succeeded)
                  ^                  │ └──────fail────> done   (record: dead, retries spent)
                  └────retry_later───┘
                  leased by a gateway that died: claimable again once its lease passes
                  (at once by the same gateway instance when it restarts)

An accepted call is written (row and record, one transaction) **before** the gateway
answers 202. Writes are group-committed: calls that arrive together share one transaction,
so durability costs one fsync per batch, not per call. Claims use ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL (several gateways share the queue) and the single writer on SQLite.
The guarantee is at-least-once: a call whose result was not yet written when its gateway
died runs again; an ``Idempotency-Key`` deduplicates submissions, not executions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from swarmless.records import InvocationRecord, now_ms
from swarmless.store.schema import async_queue, invocation_results, invocations

if TYPE_CHECKING:
    from swarmless.store.store import Store

__all__ = ["Claimed", "GroupCommit", "QueueOps", "StoredResult"]

log = logging.getLogger("swarmless.store")
T = TypeVar("T")

#: How long a batch waits for company before it commits (seconds).
GROUP_WINDOW = 0.002
GROUP_MAX = 500


@dataclasses.dataclass(frozen=True, kw_only=True)
class Claimed:
    """An async call taken from the queue by one gateway."""

    id: str
    function: str
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    callback_url: str | None
    parent: str | None
    late: bool
    enqueued_at: int
    attempt: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredResult:
    """What a finished async call answered."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


Op = Callable[[AsyncConnection], Awaitable[Any]]
BulkRun = Callable[[AsyncConnection, list[Any]], Awaitable[None]]


@dataclasses.dataclass(eq=False)
class _Pending:
    op: Op
    fut: asyncio.Future[Any]
    #: Ops of one kind are written together by one bulk statement when they can be:
    #: (kind, the bulk writer, this op's payload, the result it then returns).
    bulk: tuple[str, BulkRun, Any, Any] | None = None


class GroupCommit:
    """Runs write operations that arrive together in one transaction.

    ``await run(op)`` returns when the transaction holding ``op`` has committed. Ops given a
    ``bulk`` form are written with one multi-row statement per kind; if that fails, and for
    every other op, each runs in a savepoint of its own, so an op that fails rolls back
    alone and raises in its own caller.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._ops: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def run(self, op: Op, bulk: tuple[str, BulkRun, Any, Any] | None = None) -> Any:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._ops.append(_Pending(op, fut, bulk))
        self._wake.set()
        return await fut

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ops:
            await self._commit(self._take())

    def _take(self) -> list[_Pending]:
        batch, self._ops = self._ops[:GROUP_MAX], self._ops[GROUP_MAX:]
        if not self._ops:
            self._wake.clear()
        return batch

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._ops) < GROUP_MAX:
                await asyncio.sleep(GROUP_WINDOW)
            batch = self._take()
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        kinds: dict[str, list[_Pending]] = {}
        single: list[_Pending] = []
        for p in batch:
            if p.bulk is not None:
                kinds.setdefault(p.bulk[0], []).append(p)
            else:
                single.append(p)
        try:
            async with self._store._write() as conn:
                for group in kinds.values():
                    writer = group[0].bulk[1]  # type: ignore[index]
                    try:
                        async with conn.begin_nested():
                            await writer(conn, [p.bulk[2] for p in group])  # type: ignore[index]
                    except Exception:
                        single.extend(group)  # one by one, to find the one that fails
                    else:
                        results.extend((p.fut, p.bulk[3], None) for p in group)  # type: ignore[index]
                for p in single:
                    try:
                        async with conn.begin_nested():
                            results.append((p.fut, await p.op(conn), None))
                    except Exception as e:
                        results.append((p.fut, None, e))
        except BaseException as e:  # the commit itself failed: every op fails
            for p in batch:
                if not p.fut.done():
                    p.fut.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
            if not isinstance(e, Exception):
                raise
            return
        for fut, value, error in results:
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)


def _record_row(rec: InvocationRecord) -> dict[str, Any]:
    return rec.to_dict()


class QueueOps:
    """Async-queue operations of the store (mixed into :class:`Store`)."""

    _group: GroupCommit
    dialect: str

    if TYPE_CHECKING:  # provided by Store

        def _write(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
            raise NotImplementedError

        def _read(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
            raise NotImplementedError

        def _upsert(self, table: Any, key: str) -> Any:
            raise NotImplementedError

    async def enqueue(
        self,
        rec: InvocationRecord,
        *,
        method: str,
        path: str,
        query: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        callback_url: str | None = None,
        idempotency_key: str | None = None,
        not_before: int | None = None,
    ) -> tuple[str, bool]:
        """Queue an async call durably; returns (call id, created).

        With an ``idempotency_key`` already used for this function, nothing is queued and
        the id of the first call comes back with ``created`` False.
        """
        row = {
            "id": rec.id,
            "function": rec.function,
            "state": "queued",
            "method": method,
            "path": path,
            "query": query,
            "headers": json.dumps([list(h) for h in headers]),
            "body": body,
            "callback_url": callback_url,
            "idempotency_key": idempotency_key,
            "parent": rec.parent,
            "late": rec.late,
            "enqueued_at": rec.queued_at,
            "not_before": not_before if not_before is not None else rec.queued_at,
            "attempt": 0,
        }
        record = _record_row(rec)

        async def op(conn: AsyncConnection) -> tuple[str, bool]:
            if idempotency_key is not None:
                found = await conn.scalar(
                    select(async_queue.c.id).where(
                        async_queue.c.function == rec.function,
                        async_queue.c.idempotency_key == idempotency_key,
                    )
                )
                if found is not None:
                    return str(found), False
            await conn.execute(async_queue.insert(), [row])
            await conn.execute(self._upsert(invocations, "id"), [record])
            return rec.id, True

        bulk = (
            None
            if idempotency_key is not None
            else ("enqueue", self._enqueue_many, (row, record), (rec.id, True))
        )
        result: tuple[str, bool] = await self._group.run(op, bulk)
        return result

    async def _enqueue_many(self, conn: AsyncConnection, items: list[Any]) -> None:
        await conn.execute(async_queue.insert(), [row for row, _ in items])
        await conn.execute(self._upsert(invocations, "id"), [record for _, record in items])

    async def claim(
        self, owner: str, wants: Mapping[str, tuple[int, int]], *, now: int | None = None
    ) -> list[Claimed]:
        """Lease due calls: ``wants`` maps function -> (how many, lease ms).

        Due: queued with ``not_before`` passed, or leased by anyone whose lease expired.
        """
        now = now if now is not None else now_ms()
        wants = {f: w for f, w in wants.items() if w[0] > 0}
        if not wants:
            return []
        claimed: list[Claimed] = []
        due = or_(
            and_(async_queue.c.state == "queued", async_queue.c.not_before <= now),
            and_(async_queue.c.state == "leased", async_queue.c.lease_until < now),
        )
        async with self._write() as conn:
            for function, (n, lease_ms) in wants.items():
                query = (
                    select(async_queue)
                    .where(async_queue.c.function == function, due)
                    .order_by(async_queue.c.not_before, async_queue.c.id)
                    .limit(n)
                )
                if self.dialect == "postgresql":
                    query = query.with_for_update(skip_locked=True)
                rows = (await conn.execute(query)).mappings().all()
                if not rows:
                    continue
                # Only rows still due when updated are ours: on SQLite the select above
                # runs before the write transaction starts, so another store may have
                # taken some meanwhile.
                won = await conn.execute(
                    update(async_queue)
                    .where(async_queue.c.id.in_([r["id"] for r in rows]), due)
                    .values(
                        state="leased",
                        lease_owner=owner,
                        lease_until=now + lease_ms,
                        attempt=async_queue.c.attempt + 1,
                    )
                    .returning(async_queue.c.id)
                )
                ids = {str(i) for i in won.scalars().all()}
                rows = [r for r in rows if r["id"] in ids]
                if not rows:
                    continue
                await conn.execute(
                    update(invocations)
                    .where(invocations.c.id.in_(list(ids)))
                    .values(status="running")
                )
                for r in rows:
                    claimed.append(
                        Claimed(
                            id=r["id"],
                            function=r["function"],
                            method=r["method"],
                            path=r["path"],
                            query=r["query"],
                            headers=[(str(k), str(v)) for k, v in json.loads(r["headers"])],
                            body=bytes(r["body"]),
                            callback_url=r["callback_url"],
                            parent=r["parent"],
                            late=bool(r["late"]),
                            enqueued_at=int(r["enqueued_at"]),
                            attempt=int(r["attempt"]) + 1,
                        )
                    )
        return claimed

    async def finish(self, rec: InvocationRecord, result: StoredResult | None = None) -> None:
        """An async call is over (succeeded, or dead): record, result, queue row done."""
        record = _record_row(rec)
        stored = None
        if result is not None:
            stored = {
                "id": rec.id,
                "status": result.status,
                "headers": json.dumps([list(h) for h in result.headers]),
                "body": result.body,
            }
        # A dead call keeps its request, so that it can be redriven.
        item = (record, stored, rec.status == "dead")

        async def op(conn: AsyncConnection) -> None:
            await self._finish_many(conn, [item])

        await self._group.run(op, ("finish", self._finish_many, item, None))

    async def _finish_many(self, conn: AsyncConnection, items: list[Any]) -> None:
        await conn.execute(self._upsert(invocations, "id"), [record for record, _, _ in items])
        stored = [s for _, s, _ in items if s is not None]
        if stored:
            await conn.execute(self._upsert(invocation_results, "id"), stored)
        for keep, values in ((True, {}), (False, {"body": b""})):
            ids = [record["id"] for record, _, dead in items if dead is keep]
            if ids:
                await conn.execute(
                    update(async_queue)
                    .where(async_queue.c.id.in_(ids))
                    .values(state="done", lease_owner=None, lease_until=None, **values)
                )

    async def retry_later(
        self, rec: InvocationRecord, not_before: int, *, uncount: bool = False
    ) -> None:
        """An attempt failed and retries remain: back in the queue after ``not_before``.

        ``uncount``: the attempt did not really run (the gateway was busy or stopping), so
        it does not use up a retry.
        """
        record = _record_row(rec)
        attempt = async_queue.c.attempt - 1 if uncount else async_queue.c.attempt

        async def op(conn: AsyncConnection) -> None:
            await conn.execute(self._upsert(invocations, "id"), [record])
            await conn.execute(
                update(async_queue)
                .where(async_queue.c.id == rec.id)
                .values(
                    state="queued",
                    not_before=not_before,
                    lease_owner=None,
                    lease_until=None,
                    attempt=attempt,
                )
            )

        await self._group.run(op)

    async def release(self, owner: str) -> int:
        """Give back every lease ``owner`` holds (a gateway restarting after a crash)."""
        async with self._write() as conn:
            done = await conn.execute(
                update(async_queue)
                .where(async_queue.c.state == "leased", async_queue.c.lease_owner == owner)
                .values(state="queued", lease_owner=None, lease_until=None)
            )
            await conn.execute(
                update(invocations)
                .where(
                    invocations.c.status == "running",
                    invocations.c.kind == "async",
                    invocations.c.id.in_(
                        select(async_queue.c.id).where(async_queue.c.state == "queued")
                    ),
                )
                .values(status="queued")
            )
        return int(done.rowcount or 0)

    async def redrive(self, call_id: str) -> bool:
        """Queue a dead (or failed) async call again with a fresh retry budget."""
        now = now_ms()
        async with self._write() as conn:
            done = await conn.execute(
                update(async_queue)
                .where(async_queue.c.id == call_id, async_queue.c.state == "done")
                .values(state="queued", attempt=0, not_before=now, lease_owner=None)
            )
            if not done.rowcount:
                return False
            await conn.execute(
                update(invocations)
                .where(invocations.c.id == call_id)
                .values(status="queued", error=None)
            )
        return True

    async def queued_counts(self) -> dict[str, int]:
        """Calls waiting (queued or leased) per function."""
        query = (
            select(async_queue.c.function, func.count())
            .where(async_queue.c.state.in_(("queued", "leased")))
            .group_by(async_queue.c.function)
        )
        async with self._read() as conn:
            rows = (await conn.execute(query)).all()
        return {str(f): int(n) for f, n in rows}

    async def get_result(self, call_id: str) -> StoredResult | None:
        query = select(invocation_results).where(invocation_results.c.id == call_id)
        async with self._read() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        return StoredResult(
            status=int(row["status"]),
            headers=[(str(k), str(v)) for k, v in json.loads(row["headers"])],
            body=bytes(row["body"]),
        )
