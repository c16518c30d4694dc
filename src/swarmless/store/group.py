"""Group commit: durable writes that arrive together share one transaction.

An accepted async call is written before the gateway answers 202; written one
transaction each, durability would cost one fsync per call. :class:`GroupCommit` gathers
what arrives within :data:`GROUP_WINDOW` (at most :data:`GROUP_MAX` ops) and commits it
at once; when :data:`GROUP_EAGER` ops or more gathered (while the last batch committed, or
in the window), they go at once, the window cut short. What waits for a commit is bounded
too: at most :data:`MAX_WAITING` ops and :data:`MAX_WAITING_BYTES` of payload (the bodies
of calls being accepted); beyond that a write is refused at once with 503, so a stalled
database cannot make the gateway hold every request it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from swarmless.exceptions import GatewayUnavailable
from swarmless.store.db import RETRY_AFTER, WRITE_NOW_BYTES, Database

__all__ = ["GROUP_EAGER", "GROUP_MAX", "GROUP_WINDOW", "BulkRun", "GroupCommit", "Op"]

log = logging.getLogger("swarmless.store")

#: How long a batch waits for company before it commits (seconds).
GROUP_WINDOW = 0.002
GROUP_MAX = 500
#: Ops enough to commit at once, without the window (they gathered during the last commit).
GROUP_EAGER = 32
#: Ops, and bytes of their payloads, that may wait for a commit at once.
MAX_WAITING = 20_000
MAX_WAITING_BYTES = 512 << 20

Op = Callable[[AsyncConnection], Awaitable[Any]]
BulkRun = Callable[[AsyncConnection, list[Any]], Awaitable[None]]


@dataclasses.dataclass(eq=False, slots=True)
class _Pending:
    op: Op
    fut: asyncio.Future[Any]
    #: Ops of one kind are written together by one bulk statement when they can be:
    #: (kind, the bulk writer, this op's payload, the result it then returns).
    bulk: tuple[str, BulkRun, Any, Any] | None = None
    size: int = 0
    #: Called with ``fut`` as soon as it is done, in the same turn of the event loop (a
    #: done callback runs a turn later, and a caller awaiting what it sets a turn after).
    then: Callable[[asyncio.Future[Any]], None] | None = None

    def settle(self, value: Any = None, error: BaseException | None = None) -> None:
        """``fut``'s outcome (unless it is done already: cancelled), then :attr:`then`
        (once, as a done callback would be called, cancelled or not)."""
        if not self.fut.done():
            if error is not None:
                self.fut.set_exception(error)
            else:
                self.fut.set_result(value)
        then, self.then = self.then, None
        if then is not None:
            try:
                then(self.fut)
            except Exception:  # a hook's failure is its own: the group goes on
                log.exception("group commit: a write's hook failed")


class GroupCommit:
    """Runs write operations that arrive together in one transaction.

    ``await run(op)`` returns when the transaction holding ``op`` has committed. Ops given a
    ``bulk`` form are written with one multi-row statement per kind; a batch of bulk ops
    only is one transaction with no savepoint (the common case: accepted calls and
    outcomes). If that fails (and the database answers), the batch is written again
    carefully: each kind in a savepoint, and if a kind fails, and for every other op,
    each op in a savepoint of its own, so an op that fails rolls back alone and raises in
    its own caller.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._ops: list[_Pending] = []
        self._bytes = 0
        self._wake = asyncio.Event()
        #: Set when the window may end: it ran out, or :data:`GROUP_EAGER` ops gathered.
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Ops waiting for their commit."""
        return len(self._ops)

    async def run(
        self, op: Op, bulk: tuple[str, BulkRun, Any, Any] | None = None, *, size: int = 0
    ) -> Any:
        """Run ``op`` in the next group's transaction; ``size`` is what it holds in memory
        until then (bytes), counted against :data:`MAX_WAITING_BYTES`."""
        return await self.submit(op, bulk, size=size)

    def submit(
        self,
        op: Op,
        bulk: tuple[str, BulkRun, Any, Any] | None = None,
        *,
        size: int = 0,
        then: Callable[[asyncio.Future[Any]], None] | None = None,
    ) -> asyncio.Future[Any]:
        """:meth:`run` without waiting: the future of ``op``'s outcome (for a write that
        nobody waits for, retrieve its exception). ``then(future)`` is called the moment
        it is done, in the commit's own turn of the event loop: what the caller does with
        the outcome (answer a request) is not a turn behind the commit."""
        if self._ops and (len(self._ops) >= MAX_WAITING or self._bytes + size > MAX_WAITING_BYTES):
            raise GatewayUnavailable(
                f"the gateway's store is behind: {len(self._ops)} writes "
                f"({self._bytes >> 20} MiB) wait for it; retry later",
                retry_after=RETRY_AFTER,
            )
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._ops.append(_Pending(op, fut, bulk, size, then))
        self._bytes += size
        self._wake.set()
        if len(self._ops) >= GROUP_EAGER:
            self._full.set()
        return fut

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._ops:
            await self._commit(self._take())

    def _take(self) -> list[_Pending]:
        batch, self._ops = self._ops[:GROUP_MAX], self._ops[GROUP_MAX:]
        self._bytes -= sum(p.size for p in batch)
        if not self._ops:
            self._wake.clear()
        return batch

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            if len(self._ops) < GROUP_EAGER:  # a few: wait a moment for company
                self._full.clear()
                timer = asyncio.get_running_loop().call_later(GROUP_WINDOW, self._full.set)
                try:
                    await self._full.wait()  # ends early once GROUP_EAGER ops gathered
                finally:
                    timer.cancel()
            batch = self._take()
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        if all(p.bulk is not None for p in batch) and await self._commit_bulk(batch):
            return
        await self._commit_carefully(batch)

    async def _commit_bulk(self, batch: list[_Pending]) -> bool:
        """``batch`` (bulk ops only) in one transaction, one statement per kind and table;
        False if the database refused it (nothing was written: try carefully)."""
        kinds: dict[str, list[_Pending]] = {}
        for p in batch:
            kinds.setdefault(p.bulk[0], []).append(p)  # type: ignore[index]

        async def write(conn: AsyncConnection) -> None:
            for group in kinds.values():
                writer = group[0].bulk[1]  # type: ignore[index]
                await writer(conn, [p.bulk[2] for p in group])  # type: ignore[index]

        try:
            small = sum(p.size for p in batch) <= WRITE_NOW_BYTES
            if not (
                (small and await self._db._write_now(write))  # SQLite, on the loop's thread
                or await self._db._write_alone(write)  # PostgreSQL, one statement
            ):
                async with self._db._write() as conn, self._db._gathered(conn):
                    await write(conn)
        except GatewayUnavailable as e:  # the database is away: every op fails
            for p in batch:
                p.settle(error=e)
            return True
        except Exception:
            return False
        except BaseException as e:  # cancelled: every op fails, and so does the loop
            for p in batch:
                p.settle(error=RuntimeError(str(e) or type(e).__name__))
            raise
        for p in batch:
            p.settle(p.bulk[3])  # type: ignore[index]
        return True

    async def _commit_carefully(self, batch: list[_Pending]) -> None:
        results: list[tuple[_Pending, Any, BaseException | None]] = []
        kinds: dict[str, list[_Pending]] = {}
        single: list[_Pending] = []
        for p in batch:
            if p.bulk is not None:
                kinds.setdefault(p.bulk[0], []).append(p)
            else:
                single.append(p)
        try:
            async with self._db._write() as conn:
                for group in kinds.values():
                    writer = group[0].bulk[1]  # type: ignore[index]
                    try:
                        async with conn.begin_nested():
                            await writer(conn, [p.bulk[2] for p in group])  # type: ignore[index]
                    except Exception:
                        single.extend(group)  # one by one, to find the one that fails
                    else:
                        results.extend((p, p.bulk[3], None) for p in group)  # type: ignore[index]
                for p in single:
                    try:
                        async with conn.begin_nested():
                            results.append((p, await p.op(conn), None))
                    except Exception as e:
                        failed = self._db._as_error(e)
                        if isinstance(failed, GatewayUnavailable):
                            raise failed from e  # the database is away: the whole batch fails
                        results.append((p, None, failed))
        except BaseException as e:  # the commit itself failed: every op fails
            for p in batch:
                p.settle(error=e if isinstance(e, Exception) else RuntimeError(str(e)))
            if not isinstance(e, Exception):
                raise
            return
        for p, value, error in results:
            p.settle(value, error)
