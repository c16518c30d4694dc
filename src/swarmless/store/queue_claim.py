"""Claims of the durable async queue: due calls leased in batches, their bodies read
bounded (a part of :class:`~swarmless.store.Store`, under :mod:`swarmless.store.queue`).

A claim takes a batch of due calls in one transaction: ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL (several gateways share the queue), the single writer on SQLite. It leases rows
without their bodies, then reads the bodies (at most :data:`CLAIM_BYTES` per claim, at
least one call), in the claim's own transaction when they are small, after it otherwise,
so calls with large bodies never hold the writer or flood memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import and_, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from swarmless.records import now_ms
from swarmless.store.db import Database
from swarmless.store.schema import async_queue

__all__ = ["CLAIM_BYTES", "SMALL_BODIES", "ClaimOps", "Claimed"]

log = logging.getLogger("swarmless.store")


#: Bytes of request bodies one claim loads at most (always at least one call): calls
#: with large bodies are taken a few at a time, never all at once.
CLAIM_BYTES = 64 << 20
#: Bodies of a claim read in its own transaction when they are this small in all; larger,
#: they are read after it (the writer is not held while they load).
SMALL_BODIES = 1 << 20

#: The queue's columns but the body, and what makes a call due (SQLite, by hand: its
#: parameters are ``now`` twice).
_COLUMNS = tuple(c.name for c in async_queue.c if c.name != "body")
_NO_BODY = ", ".join(f'"{c}"' for c in _COLUMNS)
_DUE = "((state = 'queued' AND not_before <= ?) OR (state = 'leased' AND lease_until < ?))"
#: Due calls of one function (parameters: now, function, now, function, how many). Each
#: state read through the (state, not_before) index: only live rows are visited, never the
#: done ones a busy queue keeps until retention removes them (through the function's own
#: index, every claim read all of them).
_DUE_OF = (
    f"SELECT * FROM (SELECT {_NO_BODY}, length(body) AS size FROM async_queue"
    " INDEXED BY ix_async_queue_state_not_before"
    " WHERE state = 'queued' AND not_before <= ? AND function = ?"
    f" UNION ALL SELECT {_NO_BODY}, length(body) AS size FROM async_queue"
    " INDEXED BY ix_async_queue_state_not_before"
    " WHERE state = 'leased' AND lease_until < ? AND function = ?)"
    " ORDER BY not_before, id LIMIT ?"
)
#: Whether any call is due (parameters: now twice), each state through the same index.
_ANY_DUE = (
    "SELECT 1 FROM async_queue INDEXED BY ix_async_queue_state_not_before"
    " WHERE state = 'queued' AND not_before <= ?"
    " UNION ALL SELECT 1 FROM async_queue INDEXED BY ix_async_queue_state_not_before"
    " WHERE state = 'leased' AND lease_until < ? LIMIT 1"
)


def _due(now: int) -> Any:
    """Queued with ``not_before`` passed, or leased by anyone whose lease expired (the
    state named first, so that the (state, not_before) index can serve it)."""
    return and_(
        async_queue.c.state.in_(("queued", "leased")),
        or_(
            and_(async_queue.c.state == "queued", async_queue.c.not_before <= now),
            and_(async_queue.c.state == "leased", async_queue.c.lease_until < now),
        ),
    )


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


class ClaimOps(Database):
    """Claiming async calls from the queue (a part of :class:`~swarmless.store.Store`)."""

    async def claim(
        self,
        owner: str,
        wants: Mapping[str, tuple[int, int]],
        *,
        now: int | None = None,
        max_bytes: int = CLAIM_BYTES,
    ) -> list[Claimed]:
        """Lease due calls: ``wants`` maps function -> (how many, lease ms).

        Due: queued with ``not_before`` passed, or leased by anyone whose lease expired.
        One transaction for the batch; bodies at most ``max_bytes`` of them (at least one
        call), read in it when they are small (:data:`SMALL_BODIES`), else after the
        leases are committed, so a claim never holds the writer while it loads large ones.
        """
        now = now if now is not None else now_ms()
        wants = {f: w for f, w in wants.items() if w[0] > 0}
        if not wants:
            return []
        rows: list[Mapping[str, Any]] = []
        budget = max_bytes
        bodies: dict[str, bytes] | None = None
        async with self._write() as conn:
            for function, (n, lease_ms) in wants.items():
                if budget <= 0 and rows:
                    break
                found: list[Mapping[str, Any]] = []
                for r in await self._due(conn, function, n, now):
                    size_of = int(r["size"] or 0)
                    if (rows or found) and budget < size_of:
                        break  # over the budget, and this claim has a call already
                    budget -= size_of
                    found.append(r)
                if not found:
                    continue
                # Only rows still due when updated are ours: on SQLite the select above
                # runs before the write transaction starts, so another store may have
                # taken some meanwhile.
                ids = await self._lease(conn, [r["id"] for r in found], owner, now, lease_ms)
                rows.extend(r for r in found if r["id"] in ids)
            if rows and max_bytes - budget <= SMALL_BODIES:  # small: read them right here
                bodies = await self._read_bodies(conn, [r["id"] for r in rows])
        if not rows:
            return []
        if bodies is None:
            bodies = await self._bodies(owner, [r["id"] for r in rows])
        return [
            Claimed(
                id=r["id"],
                function=r["function"],
                method=r["method"],
                path=r["path"],
                query=r["query"],
                headers=[(str(k), str(v)) for k, v in json.loads(r["headers"])],
                body=bodies.get(r["id"], b""),
                callback_url=r["callback_url"],
                parent=r["parent"],
                late=bool(r["late"]),
                enqueued_at=int(r["enqueued_at"]),
                attempt=int(r["attempt"]) + 1,
            )
            for r in rows
        ]

    async def any_due(self, *, now: int | None = None) -> bool:
        """Whether any call is due (of any function): queued with ``not_before`` passed, or
        leased with its lease expired. One read, on the reader, through the (state,
        not_before) index: a runner's periodic sweep asks it first, and when nothing is due
        takes no write transaction and reads nothing per function."""
        now = now if now is not None else now_ms()
        async with self._read() as conn:
            if self.dialect == "sqlite":
                return bool(await self._fetch(conn, _ANY_DUE, (now, now)))
            query = select(literal(1)).select_from(async_queue).where(_due(now)).limit(1)
            return (await conn.execute(query)).first() is not None

    async def _due(
        self, conn: AsyncConnection, function: str, n: int, now: int
    ) -> list[Mapping[str, Any]]:
        """Up to ``n`` due calls of ``function``, oldest first, without their bodies (their
        ``size`` instead); locked, skipping those locked, on PostgreSQL."""
        if self.dialect == "sqlite":
            found = await self._fetch(conn, _DUE_OF, (now, function, now, function, n))
            return [dict(zip((*_COLUMNS, "size"), r, strict=True)) for r in found]
        query = (
            select(
                *[c for c in async_queue.c if c.name != "body"],
                func.octet_length(async_queue.c.body).label("size"),
            )
            .where(async_queue.c.function == function, _due(now))
            .order_by(async_queue.c.not_before, async_queue.c.id)
            .limit(n)
            .with_for_update(skip_locked=True)
        )
        return [dict(r) for r in (await conn.execute(query)).mappings().all()]

    async def _lease(
        self, conn: AsyncConnection, ids: list[str], owner: str, now: int, lease_ms: int
    ) -> set[str]:
        """Lease the calls ``ids`` that are still due to ``owner``; their ids."""
        if self.dialect == "sqlite":
            won: set[str] = set()
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                sql = (
                    "UPDATE async_queue SET state = 'leased', lease_owner = ?, lease_until = ?,"
                    f" attempt = attempt + 1 WHERE id IN ({', '.join('?' * len(part))})"
                    f" AND {_DUE} RETURNING id"
                )
                got = await self._fetch(conn, sql, (owner, now + lease_ms, *part, now, now))
                won.update(str(r[0]) for r in got)
            if won:
                self._wrote(conn)
            return won
        result = await conn.execute(
            update(async_queue)
            .where(async_queue.c.id.in_(ids), _due(now))
            .values(
                state="leased",
                lease_owner=owner,
                lease_until=now + lease_ms,
                attempt=async_queue.c.attempt + 1,
            )
            .returning(async_queue.c.id)
        )
        return {str(i) for i in result.scalars().all()}

    async def _read_bodies(self, conn: AsyncConnection, ids: list[str]) -> dict[str, bytes]:
        if self.dialect == "sqlite":
            bodies: dict[str, bytes] = {}
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                sql = f"SELECT id, body FROM async_queue WHERE id IN ({', '.join('?' * len(part))})"
                bodies.update(
                    (str(r[0]), bytes(r[1])) for r in await self._fetch(conn, sql, tuple(part))
                )
            return bodies
        query = select(async_queue.c.id, async_queue.c.body).where(async_queue.c.id.in_(ids))
        return {str(i): bytes(b) for i, b in (await conn.execute(query)).all()}

    async def _bodies(self, owner: str, ids: list[str]) -> dict[str, bytes]:
        """The bodies of calls just leased; if they cannot be read, the leases go back
        (uncounted) before the error is raised, so the calls are claimable again at once."""
        try:
            async with self._read() as conn:
                return await self._read_bodies(conn, ids)
        except Exception:
            try:
                async with self._write() as conn:
                    await conn.execute(
                        update(async_queue)
                        .where(async_queue.c.id.in_(ids), async_queue.c.lease_owner == owner)
                        .values(
                            state="queued",
                            lease_owner=None,
                            lease_until=None,
                            attempt=async_queue.c.attempt - 1,
                        )
                    )
            except Exception as e:  # they run once their leases pass
                log.warning("store: could not give back %d leases: %s", len(ids), e)
            raise
