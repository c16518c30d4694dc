"""The durable queue of async calls, part of :class:`swarmless.store.Store`.

Life of a row in ``async_queue`` (its record in ``invocations`` follows along)::

    enqueue ──> queued ──claim──> leased ──complete──> deleted (record: succeeded)
       │          ^   ^              │ │                 (done, without its body, if the
       │          │   │              │ │                  call has an Idempotency-Key)
       │          │   │              │ └──────fail────> done   (record: dead, retries spent)
       │          │   └─retry_later──┤
       │          └────give_back─────┘   (claimed, never started: not counted)
       └─(leased_to)─> leased            (handed to the accepting gateway's runner)
                  leased by a gateway that died: claimable again once its lease passes
                  (at once by the same gateway instance when it restarts)

The record says ``queued`` until the call starts (:meth:`QueueOps.mark_running`, written
with the next group, best effort), then ``running``, then its outcome.

An accepted call is written (row and record, one transaction) **before** the gateway
answers 202. Writes are group-committed: calls that arrive together share one transaction,
so durability costs one fsync per batch, not per call; so are outcomes (``finish``). A
claim takes a batch of due calls in one transaction: ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL (several gateways share the queue), the single writer on SQLite.
The guarantee is at-least-once: a call whose result was not yet written when its gateway
died runs again; an ``Idempotency-Key`` deduplicates submissions, not executions.

Bounded: a claim leases rows without their bodies, then reads the bodies (at most
:data:`CLAIM_BYTES` per claim, at least one call), so calls with large bodies never hold
the writer or flood memory. While the database is away, ``enqueue`` answers 503 at once
(nothing queued) and the writes that must not be lost (``finish``, ``retry_later``,
``release``) are retried for a bounded time.

Claims (leases, bounded body reads) live in :mod:`swarmless.store.queue_claim`; this
module re-exports :data:`CLAIM_BYTES` and :class:`Claimed`, every import path unchanged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from sqlalchemy import bindparam, delete, func, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from swarmless.exceptions import SwarmlessError
from swarmless.records import InvocationRecord, now_ms
from swarmless.store.group import GroupCommit
from swarmless.store.queue_claim import CLAIM_BYTES, Claimed, ClaimOps
from swarmless.store.schema import async_queue, invocation_results, invocations

__all__ = ["CLAIM_BYTES", "Claimed", "QueueOps", "StoredResult"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoredResult:
    """What a finished async call answered."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _record_row(rec: InvocationRecord) -> dict[str, Any]:
    return rec.to_dict()


#: The columns of a call's record set once, when it is accepted: what names the call.
_IDENTITY = frozenset({"id", "function", "queued_at", "parent"})
#: The columns an async call's outcome writes (:meth:`QueueOps.finish_many`).
_OUTCOME_COLUMNS = tuple(c.name for c in invocations.columns if c.name not in _IDENTITY)


def headers_json(headers: Sequence[tuple[str, str]]) -> str:
    """``json.dumps([list(h) for h in headers])``, the same text, written out: each name
    and value through json's own (C) string encoder, no lists built, no encoder object
    (anything but pairs of strings goes through ``json.dumps``)."""
    if not headers:
        return "[]"
    enc = encode_basestring_ascii
    try:
        return "[" + ", ".join([f"[{enc(k)}, {enc(v)}]" for k, v in headers]) + "]"
    except (TypeError, ValueError):
        return json.dumps([list(h) for h in headers])


class QueueOps(ClaimOps):
    """Async-queue operations of the store (a part of :class:`~swarmless.store.Store`):
    accepts, running marks and outcomes here, claims in :class:`ClaimOps`."""

    def _init_queue(self) -> None:
        self._group = GroupCommit(self)
        self._queue_insert = self._insert_all(async_queue)
        # An async call is over. A dead call's row is kept done with its request, so that
        # it can be redriven. Otherwise the row is deleted, unless the call has an
        # idempotency key: then it stays done without its body, to remember the key (as
        # long as retention keeps the call's record). Nothing else reads a done row, and
        # a delete writes the least: on PostgreSQL an update writes a new version of the
        # row and an entry in each of its three indexes (the state is in one of them),
        # and the delete took a third off the server's CPU for a call's writes
        # (accepted, finished) in a micro-benchmark.
        mine = async_queue.c.id == bindparam("qid")
        keyed = async_queue.c.idempotency_key.is_not(None)
        unkeyed = async_queue.c.idempotency_key.is_(None)
        done: dict[str, Any] = {
            "state": bindparam("state"),
            "lease_owner": bindparam("lease_owner"),
            "lease_until": bindparam("lease_until"),
        }
        self._done_keep = update(async_queue).where(mine).values(done)
        self._update_by_key(self._done_keep, async_queue, "id", "qid")
        self._done_keyed = (
            update(async_queue).where(mine, keyed).values(done | {"body": bindparam("body")})
        )
        self._update_by_key(self._done_keyed, async_queue, "id", "qid", where=keyed)
        self._done_drop = delete(async_queue).where(mine, unkeyed)
        self._delete_by_key(self._done_drop, async_queue, "id", "qid", where=unkeyed)
        # An async call's outcome in its record. On SQLite: an update of what a run can
        # change, not an upsert of every column. The record exists (written with the
        # queue row, and kept while the row is not done: retention), and what names the
        # call is set once, at accept: its function, when it was queued, the call that
        # made it. An update that leaves those (two of the record's indexes) alone
        # writes an outcome in about 60% of an upsert's time, on the loop's thread
        # (:meth:`~swarmless.store.db.Database._write_now`). On PostgreSQL the upsert
        # stays: it shares one statement with the records of the calls accepted in the
        # same group (:meth:`~swarmless.store.db.Database._gathered`), where an update
        # of its own costs the client more than it saves the server.
        self._outcome = self._upsert(invocations, "id")
        if self.dialect == "sqlite":
            self._outcome = (
                update(invocations)
                .where(invocations.c.id == bindparam("rid"))
                .values({name: bindparam(name) for name in _OUTCOME_COLUMNS})
            )
        # A started call's record says running (unless it already says more): one
        # statement built once, run for every call marked (by primary key); on PostgreSQL
        # its rows join the one statement of the group that writes them.
        queued = invocations.c.status == literal_column("'queued'")
        self._mark = (
            update(invocations)
            .where(invocations.c.id == bindparam("mid"), queued)
            .values(status=bindparam("status"))
        )
        self._update_by_key(self._mark, invocations, "id", "mid", where=queued)
        #: Calls started whose record does not say so yet, and the write that will say it
        #: (see :meth:`mark_running`).
        self._marks: set[str] = set()
        self._marking: asyncio.Future[Any] | None = None

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
        leased_to: tuple[str, int] | None = None,
    ) -> tuple[str, bool]:
        """Queue an async call durably; returns (call id, created) once it is committed
        (:meth:`enqueue_future`, awaited)."""
        result: tuple[str, bool] = await self.enqueue_future(
            rec,
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            callback_url=callback_url,
            idempotency_key=idempotency_key,
            not_before=not_before,
            leased_to=leased_to,
        )
        return result

    def enqueue_future(
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
        leased_to: tuple[str, int] | None = None,
        then: Callable[[asyncio.Future[tuple[str, bool]]], None] | None = None,
    ) -> asyncio.Future[tuple[str, bool]]:
        """Queue an async call durably: the future of (call id, created), done when the
        group holding the call has committed (no task of its own: a caller that goes on
        with the call once written adds a done callback).

        With an ``idempotency_key`` already used for this function, nothing is queued and
        the id of the first call comes back with ``created`` False. While the database is
        away (or the write-behind buffer is full) it fails at once with
        :class:`~swarmless.exceptions.GatewayUnavailable` (503): nothing was queued.

        ``leased_to`` (owner, lease ms): the call is written already claimed by ``owner``
        (its first attempt), for a gateway that runs it from memory without claiming it
        back; if that gateway dies, the call is claimable again once the lease passes, as
        any claimed call. ``then(future)`` is called the moment the future is done, in
        the commit's turn of the event loop (:meth:`GroupCommit.submit`).
        """
        self._check_room()
        owner, lease_ms = leased_to if leased_to is not None else (None, 0)
        row = {
            "id": rec.id,
            "function": rec.function,
            "state": "queued" if owner is None else "leased",
            "method": method,
            "path": path,
            "query": query,
            "headers": headers_json(headers),
            "body": body,
            "callback_url": callback_url,
            "idempotency_key": idempotency_key,
            "parent": rec.parent,
            "late": rec.late,
            "enqueued_at": rec.queued_at,
            "not_before": not_before if not_before is not None else rec.queued_at,
            "attempt": 0 if owner is None else 1,
            "lease_owner": owner,
            "lease_until": None if owner is None else now_ms() + lease_ms,
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
        fut: asyncio.Future[tuple[str, bool]] = self._group.submit(
            op, bulk, size=len(body), then=then
        )
        return fut

    async def _enqueue_many(self, conn: AsyncConnection, items: list[Any]) -> None:
        await self._executemany_all(
            conn,
            [
                (self._queue_insert, [row for row, _ in items]),
                (self._upsert(invocations, "id"), [record for _, record in items]),
            ],
        )

    def mark_running(self, call_id: str) -> None:
        """The record of a claimed call says ``running``: it started. Written with the next
        group of writes, not waited for, best effort (a record already final is left
        alone, and a call whose outcome is written before its mark is not marked at all;
        a mark may be lost while the database is away, an outcome is not)."""
        self._marks.add(call_id)
        if self._marking is not None and not self._marking.done():
            return  # the op waiting for the next group writes it too
        try:
            fut = self._group.submit(
                self._running_many_op, ("running", self._running_bulk, 0, None)
            )
        except SwarmlessError:  # the group is full (the database is behind): next time
            return
        self._marking = fut
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def _running_bulk(self, conn: AsyncConnection, _items: list[Any]) -> None:
        await self._running_many_op(conn)

    async def _running_many_op(self, conn: AsyncConnection) -> None:
        ids, self._marks = self._marks, set()
        if ids:
            rows = [{"mid": i, "status": "running"} for i in ids]
            await self._executemany(conn, self._mark, rows)

    async def finish(self, rec: InvocationRecord, result: StoredResult | None = None) -> None:
        """An async call is over (succeeded, or dead): record, result, queue row done.
        Retried while the database is away (a bounded time: ``db.DURABLE_RETRY``)."""
        await self.finish_many([(rec, result)])

    async def finish_many(
        self, outcomes: Sequence[tuple[InvocationRecord, StoredResult | None]]
    ) -> None:
        """Async calls are over (:meth:`finish` for each), written together: one op of the
        next group (its statements shared with the other outcomes of that group). All or
        none: if the database refuses one of them, none is written and the error is raised
        (write them one by one, :meth:`finish`, to find which). Retried while the
        database is away (a bounded time: ``db.DURABLE_RETRY``)."""
        if not outcomes:
            return
        items: list[tuple[dict[str, Any], dict[str, Any] | None, bool]] = []
        size = 0
        for rec, result in outcomes:
            stored = None
            if result is not None:
                stored = {
                    "id": rec.id,
                    "status": result.status,
                    "headers": headers_json(result.headers),
                    "body": result.body,
                }
                size += len(result.body)
            # A dead call keeps its request, so that it can be redriven.
            record = _record_row(rec)
            record["rid"] = rec.id
            items.append((record, stored, rec.status == "dead"))
            self._marks.discard(rec.id)  # not marked running if not yet: its outcome says more

        async def op(conn: AsyncConnection) -> None:
            await self._finish_many(conn, items)

        what = (
            f"the outcome of {outcomes[0][0].id}"
            if len(outcomes) == 1
            else f"the outcomes of {len(outcomes)} calls"
        )
        await self._durably(
            what,
            lambda: self._group.run(op, ("finish", self._finish_lists, items, None), size=size),
        )
        for rec, _ in outcomes:
            self._watchers.changed(rec.id)

    async def _finish_lists(self, conn: AsyncConnection, lists: list[Any]) -> None:
        """The bulk form of :meth:`finish_many`: the outcomes of every op of a group."""
        await self._finish_many(conn, [item for items in lists for item in items])

    async def _finish_many(self, conn: AsyncConnection, items: list[Any]) -> None:
        """Records, results and queue rows of ``items``: every statement in one trip to the
        driver on SQLite (:meth:`~swarmless.store.db.Database._executemany_all`)."""
        done = {"state": "done", "lease_owner": None, "lease_until": None}
        over = [record["id"] for record, _, dead in items if not dead]
        work: list[tuple[Any, list[dict[str, Any]]]] = [
            (self._outcome, [record for record, _, _ in items]),
            (self._upsert(invocation_results, "id"), [s for _, s, _ in items if s is not None]),
            (self._done_drop, [{"qid": i} for i in over]),
            (self._done_keyed, [{"qid": i, "body": b""} | done for i in over]),
            (self._done_keep, [{"qid": r["id"]} | done for r, _, dead in items if dead]),
        ]
        await self._executemany_all(conn, work)

    async def retry_later(
        self, rec: InvocationRecord, not_before: int, *, uncount: bool = False
    ) -> None:
        """An attempt failed and retries remain: back in the queue after ``not_before``.

        ``uncount``: the attempt did not really run (the gateway was busy or stopping), so
        it does not use up a retry. Retried while the database is away.
        """
        record = _record_row(rec)
        attempt = async_queue.c.attempt - 1 if uncount else async_queue.c.attempt
        self._marks.discard(rec.id)  # queued again: a late mark would say running

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

        await self._durably(f"the retry of {rec.id}", lambda: self._group.run(op))
        self._watchers.changed(rec.id)

    async def give_back(self, owner: str, ids: Sequence[str]) -> int:
        """Calls ``owner`` claimed but never started go back to the queue, claimable at
        once, their claim not counted as an attempt (a gateway stopping with calls claimed
        ahead). Calls whose lease ``owner`` no longer holds are left alone."""
        if not ids:
            return 0
        async with self._write() as conn:
            done = await conn.execute(
                update(async_queue)
                .where(
                    async_queue.c.id.in_(list(ids)),
                    async_queue.c.state == "leased",
                    async_queue.c.lease_owner == owner,
                )
                .values(
                    state="queued",
                    lease_owner=None,
                    lease_until=None,
                    attempt=async_queue.c.attempt - 1,
                )
                .returning(async_queue.c.id)
            )
            back = [str(i) for i in done.scalars().all()]
            if back:
                await conn.execute(
                    update(invocations)
                    .where(invocations.c.id.in_(back), invocations.c.status == "running")
                    .values(status="queued")
                )
        return len(back)

    async def release(self, owner: str) -> int:
        """Give back every lease ``owner`` holds (a gateway restarting after a crash).

        Retried while the database is away."""
        return await self._durably("giving back leases", lambda: self._release(owner))

    async def _release(self, owner: str) -> int:
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
        self._check_room()
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
        self._watchers.changed(call_id)
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
        """What finished async call ``call_id`` answered (None: not kept, or no such call)."""
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
