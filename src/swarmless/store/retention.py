"""Retention: what the store keeps, for how long, and the sweeper that deletes the rest.

Four kinds of rows grow with every call; each is kept by age **and** count (whichever
deletes more; 0 turns a limit off):

- **records** of finished calls (succeeded, failed, timed out, cancelled), with their
  logs, result, child containers' outcomes and finished queue row (an
  ``Idempotency-Key`` is remembered as long as its call's record). Calls still queued
  or running are never deleted, and dead letters have their own limits;
- **logs** (the stdout and stderr of a call): the largest rows, kept shorter;
- **results** (what a finished async call answered, for ``Invocation.result()``);
- **dead letters**: async calls that died, with their requests (for a redrive).

Call ids begin with their creation time, so "older than" and "beyond the newest N" are
ranges of primary keys, found through the index. The :class:`Sweeper` deletes in batches
of :data:`BATCH` rows, one short transaction each, at most :data:`MAX_BATCHES` per kind
and sweep, every ``interval`` seconds (the active gateway runs it). SQLite reuses the
pages freed, so under a steady load the store's file stops growing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, delete, or_, select

from swarmless.exceptions import SwarmlessError
from swarmless.records import now_ms
from swarmless.retention import KINDS, Retention
from swarmless.store.db import Database
from swarmless.store.schema import (
    async_queue,
    invocation_children,
    invocation_logs,
    invocation_results,
    invocations,
)

__all__ = ["BATCH", "KINDS", "MAX_BATCHES", "Retention", "RetentionOps", "Sweeper"]

log = logging.getLogger("swarmless.store")

#: Rows deleted per transaction, and transactions per kind in one sweep.
BATCH = 2000
MAX_BATCHES = 50
#: Records of these statuses are finished and not dead letters.
_FINISHED = ("succeeded", "failed", "timeout", "cancelled")


def _id_at(ms: int) -> str:
    """The smallest call id made at epoch ``ms`` (ids are ``<ms as 12 hex>-<random>``)."""
    return f"{max(ms, 0):012x}"


class RetentionOps(Database):
    """Deleting what retention lets go (a part of :class:`~swarmless.store.Store`)."""

    def _init_retention(self) -> None:
        #: Rows deleted by sweeps so far, by kind.
        self.swept: dict[str, int] = dict.fromkeys(KINDS, 0)

    async def sweep(self, retention: Retention, *, now: int | None = None) -> dict[str, int]:
        """Delete what ``retention`` lets go (bounded: :data:`MAX_BATCHES` batches per
        kind); returns the rows deleted by kind."""
        now = now_ms() if now is None else now
        done = dict.fromkeys(KINDS, 0)
        for kind in KINDS:
            age, count = retention.limits(kind)
            key, candidates = self._candidates(kind)
            bounds = []
            if age > 0:
                bounds.append(key < _id_at(now - int(age * 1000)))
            if count > 0:
                async with self._read() as conn:
                    nth = await conn.scalar(candidates.order_by(key.desc()).offset(count).limit(1))
                if nth is not None:
                    bounds.append(key <= nth)
            if not bounds:
                continue
            due = candidates.where(or_(*bounds)).order_by(key).limit(BATCH)
            for _ in range(MAX_BATCHES):
                n = await self._delete_batch(kind, due)
                done[kind] += n
                self.swept[kind] += n
                if n < BATCH:
                    break
                await asyncio.sleep(0)  # other writers take their turn between batches
        return done

    def _candidates(self, kind: str) -> tuple[Any, Select[Any]]:
        """The id column of ``kind``'s rows, and a select of the ids that may go."""
        if kind == "records":
            active = select(async_queue.c.id).where(async_queue.c.state != "done")
            key = invocations.c.id
            return key, select(key).where(invocations.c.status.in_(_FINISHED), key.not_in(active))
        if kind == "logs":
            return invocation_logs.c.id, select(invocation_logs.c.id)
        if kind == "results":
            return invocation_results.c.id, select(invocation_results.c.id)
        key = async_queue.c.id
        dead = and_(async_queue.c.state == "done", invocations.c.status == "dead")
        return key, select(key).join(invocations, invocations.c.id == key).where(dead)

    async def _delete_batch(self, kind: str, due: Select[Any]) -> int:
        async with self._write() as conn:
            ids = [str(i) for i in (await conn.execute(due)).scalars().all()]
            if not ids:
                return 0
            if kind == "logs":
                tables = [invocation_logs]
            elif kind == "results":
                tables = [invocation_results]
            else:  # a record goes with its logs, result, children and finished queue row
                tables = [
                    invocation_logs,
                    invocation_results,
                    invocation_children,
                    async_queue,
                    invocations,
                ]
            for table in tables:
                where: ColumnElement[bool] = table.c.id.in_(ids)
                if table is async_queue:
                    where = and_(where, async_queue.c.state == "done")
                await conn.execute(delete(table).where(where))
        return len(ids)


class Sweeper:
    """Runs :meth:`RetentionOps.sweep` every ``retention.interval`` seconds; a sweep that
    fails (the database away) is logged and tried again at the next interval."""

    def __init__(self, store: RetentionOps, retention: Retention) -> None:
        self.store = store
        self.retention = retention
        #: The error of the last sweep, if it failed.
        self.error: str | None = None

    async def sweep(self) -> dict[str, int]:
        """One sweep now; returns the rows deleted by kind."""
        try:
            done = await self.store.sweep(self.retention)
        except SwarmlessError as e:
            if self.error is None:
                log.warning(
                    "store: the retention sweep failed (%s); next try in %gs",
                    e.message,
                    self.retention.interval,
                )
            self.error = e.message
            return dict.fromkeys(KINDS, 0)
        self.error = None
        if any(done.values()):
            log.info(
                "store: retention swept %s",
                ", ".join(f"{n} {kind}" for kind, n in done.items() if n),
            )
        return done

    async def run(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(self.retention.interval)
