"""The async runner: takes due calls from the durable queue and runs them.

It runs calls per function up to the function's limit (its ``async_concurrency``, by
default ``max_containers x concurrency``), each through the same :class:`Dispatcher` as
sync calls (same containers, same deadline). What it holds and hands over per function,
and how long a lease lasts: :mod:`~swarmless.dispatch.async_limits`; each call's run and
its durable outcome (retries with backoff, the dead letter, calls not counted when the
gateway is busy or the engine away): :mod:`~swarmless.dispatch.async_attempts`;
callbacks: :mod:`~swarmless.dispatch.async_callbacks`. While the Docker Engine does not
answer, nothing is claimed (the wiring wakes the runner when it answers again).

How calls reach it, with as few store round trips as a call can have:

- **handed over at accept**: a call accepted by this gateway (:meth:`AsyncRunner.submit`)
  while the runner has room (``hand_over_limit``: deeper than a claim goes, so that a
  burst is taken in hand as it comes) and nothing of its function waits in the store is
  written already claimed by this gateway, in the transaction that accepts it
  (group-committed with the calls accepted with it), its lease as long as the calls held
  before it need, and kept in memory: it starts without being read back;
- **claimed in batches**: otherwise the runner claims due calls in one transaction per
  batch (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), up to ``AHEAD`` times the function's
  limit held: the calls beyond its free slots wait in memory (their bodies
  :data:`~swarmless.store.queue.CLAIM_BYTES` at most in all) and start the moment a slot
  frees. A claim is made once fewer calls than the limit wait in memory, so a busy runner
  claims many calls at a time, not one per slot that frees;
- **outcomes group-committed**: the store gathers the outcomes that end together into one
  transaction (bounded; a call's slot is free before its outcome is written). An outcome
  not yet committed when the gateway dies is not lost: the call is still leased, and runs
  again once its lease passes (at once when this gateway restarts). At-least-once.
- **running marks, late and together**: a call's record says ``running`` once it has run
  up to :data:`MARK_AFTER` (the marks of the calls started meanwhile in one write); a call
  over by then goes from ``queued`` straight to its outcome, with no write of its own.

A gateway that restarts gives back the leases it held when it died (they run again:
at-least-once); a call whose runs were lost that way too often goes to the dead letter
(:data:`~swarmless.dispatch.async_attempts.POISON_STARTS`; a call held in memory, not
started, when its gateway was killed counts as such a run).

This module re-exports :class:`CallbackTargets` and the limits of calls held, callbacks and
attempts, every import path unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Sequence

from swarmless.dispatch.async_attempts import POISON_STARTS as POISON_STARTS
from swarmless.dispatch.async_attempts import Attempts
from swarmless.dispatch.async_callbacks import CALLBACK_PAUSE as CALLBACK_PAUSE
from swarmless.dispatch.async_callbacks import CALLBACK_TRIES as CALLBACK_TRIES
from swarmless.dispatch.async_callbacks import MAX_REDIRECTS as MAX_REDIRECTS
from swarmless.dispatch.async_callbacks import CallbackSender, CallbackTargets
from swarmless.dispatch.async_limits import (
    AHEAD,
    async_limit,
    hand_over_lease_ms,
    hand_over_limit,
    in_flight_limit,
    lease_ms,
)
from swarmless.dispatch.async_limits import LEASE_SLACK as LEASE_SLACK
from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.exceptions import SwarmlessError
from swarmless.records import InvocationRecord
from swarmless.store import Claimed, Store
from swarmless.store.queue import CLAIM_BYTES

__all__ = ["AsyncRunner", "CallbackTargets"]

log = logging.getLogger("swarmless.async")

#: While calls run, how long the runner lets finished slots gather before it claims.
COALESCE = 0.003
#: A started call's record says ``running`` once it has run up to this long (seconds):
#: the marks of the calls started meanwhile go out together, and a call that is over by
#: then is not marked at all (its outcome, written next, says more).
MARK_AFTER = 0.05

#: Seconds between two tries to take back the calls held before a restart (doubling).
TAKE_BACK_MIN = 1.0
TAKE_BACK_MAX = 30.0


class AsyncRunner:
    """Moves async calls from the queue through the dispatcher, durably."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        store: Store,
        *,
        owner: str,
        callbacks: CallbackTargets,
        idle_poll: float = 0.5,
    ) -> None:
        self.dispatcher = dispatcher
        self.callbacks = callbacks
        self.store = store
        self.owner = owner
        self.idle_poll = idle_poll
        #: Set when a call is queued: the runner claims at once.
        self._wake = asyncio.Event()
        #: Calls running per function.
        self._running: dict[str, int] = {}
        self._slot_held: dict[str, bool] = {}
        #: Calls claimed (or handed over) and not started yet, per function, oldest first.
        self._ahead: dict[str, collections.deque[Claimed]] = {}
        self._ahead_bytes = 0
        #: Calls handed over at accept whose transaction has not committed yet.
        self._incoming: dict[str, int] = {}
        #: Every call this runner holds (waiting, running, outcome being written): a
        #: claim that returns one of them again (its lease ran out) does not run it twice.
        self._held: set[str] = set()
        #: Functions whose due calls may wait in the store, not claimed: a call was queued
        #: there, or the last claim got all it asked for. Claims are for these (and for
        #: every function at each idle poll when the store has any call due: retries come
        #: due, other replicas queue, a dead gateway's leases expire).
        self._backlog: set[str] = set()
        self._sweep = True
        #: The task running each call started, by call id (it leaves when it ends).
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._callbacks = CallbackSender(store, callbacks)
        self._attempts = Attempts(dispatcher, store, self._callbacks)
        #: Calls waiting per function, refreshed as the runner goes (metrics, ls).
        self._queued: dict[str, int] = {}
        #: Calls started since the last marks went out (:data:`MARK_AFTER`).
        self._unmarked: set[str] = set()
        self._mark_timer: asyncio.TimerHandle | None = None
        self._stopping = False

    # -- what collaborators ask ------------------------------------------------------------

    async def submit(
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
    ) -> tuple[str, bool]:
        """Queue an async call durably (:meth:`Store.enqueue`); returns (call id, created).

        With room here and nothing of its function waiting in the store, the call is
        written claimed by this gateway and kept in memory: it starts without a claim.
        """
        name = rec.function
        found = self.dispatcher.functions.get(name)
        held = self._held_count(name)
        room = (
            found is not None
            and not self._stopping
            and self.dispatcher.engine_down is None
            and name not in self._backlog
            and self._ahead_bytes + len(body) <= CLAIM_BYTES
            and held < hand_over_limit(found[0])
        )
        if not room or found is None:
            call_id, created = await self.store.enqueue(
                rec,
                method=method,
                path=path,
                query=query,
                headers=headers,
                body=body,
                callback_url=callback_url,
                idempotency_key=idempotency_key,
            )
            if created:
                self.accepted(name)
            return call_id, created
        # What the caller awaits: its own future, so that a caller that goes away (its
        # await cancelled) never cancels the write, and the call is taken in hand anyway.
        answer: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()

        def settled(done: asyncio.Future[tuple[str, bool]]) -> None:
            # Runs whether or not the caller is still there: a call written claimed by
            # this gateway is always taken in hand.
            self._incoming[name] -= 1
            self._ahead_bytes -= len(body)
            if done.cancelled():
                if not answer.done():
                    answer.cancel()
                return
            failed = done.exception()
            if failed is not None:
                if not answer.done():
                    answer.set_exception(failed)
                return
            call_id, created = done.result()
            if not answer.done():
                answer.set_result((call_id, created))
            if not created:
                return
            self._queued[name] = self._queued.get(name, 0) + 1
            self._take(
                Claimed(
                    id=call_id,
                    function=name,
                    method=method,
                    path=path,
                    query=query,
                    headers=list(headers),
                    body=body,
                    callback_url=callback_url,
                    parent=rec.parent,
                    late=rec.late,
                    enqueued_at=rec.queued_at,
                    attempt=1,
                )
            )

        # Written with the calls accepted with it (the group's own future, no task);
        # ``settled`` runs in the commit's own turn of the event loop (not a turn later as
        # a done callback would): the caller's 202 is one turn behind the commit, not two.
        self.store.enqueue_future(
            rec,
            method=method,
            path=path,
            query=query,
            headers=headers,
            body=body,
            callback_url=callback_url,
            idempotency_key=idempotency_key,
            leased_to=(self.owner, hand_over_lease_ms(found[0], held)),
            then=settled,
        )
        self._incoming[name] = self._incoming.get(name, 0) + 1
        self._ahead_bytes += len(body)
        return await answer

    def accepted(self, function: str) -> None:
        """A call of ``function`` was queued in the store (not through :meth:`submit`):
        count it (until the next refresh of the counts) and claim at once."""
        self._queued[function] = self._queued.get(function, 0) + 1
        self._backlog.add(function)
        self._wake.set()

    def wake_up(self) -> None:
        """Claim now rather than at the next idle poll (a redrive, a schedule that fired)."""
        self._sweep = True
        self._wake.set()

    def waiting(self, function: str) -> int:
        """Async calls of ``function`` waiting in the queue, as last counted."""
        return self._queued.get(function, 0)

    def counts(self, function: str) -> dict[str, int]:
        """Async calls of ``function`` queued and running (for metrics and ``ls``)."""
        return {
            "async_queued": self._queued.get(function, 0),
            "async_running": self._running.get(function, 0),
        }

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        await self._take_back()
        while not self._stopping:
            self._wake.clear()
            if self.dispatcher.engine_down is not None:  # nothing could run: claim nothing
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_poll)
                continue
            sweep, self._sweep = self._sweep, False
            wants = self._wants(sweep)
            if sweep and wants.keys() - self._backlog and not await self._any_due():
                wants = self._wants(False)  # nothing due in the store: only where calls are known
            if wants and await self._claim(wants):
                continue  # there may be more; claim again before sleeping
            try:
                await asyncio.wait_for(self._wake.wait(), self.idle_poll)
            except TimeoutError:
                self._sweep = True
            if any(self._running.values()):
                # Busy: let a few more calls finish, then claim their slots in one
                # transaction rather than one each (an idle runner claims at once).
                await asyncio.sleep(COALESCE)

    async def _any_due(self) -> bool:
        """Whether the store has a call due (True if it cannot say: the claim that follows
        finds out, and says why it failed)."""
        try:
            return await self.store.any_due()
        except SwarmlessError:
            return True

    async def _take_back(self) -> None:
        """Give back the calls this gateway held when it stopped, before claiming any. The
        store may be away at start for longer than one try waits: try again (a bounded
        backoff, a line each try) for as long as it takes, never give up the runner."""
        pause, tries = TAKE_BACK_MIN, 0
        while not self._stopping:
            try:
                released = await self.store.release(self.owner)
            except SwarmlessError as e:
                tries += 1
                log.error(
                    "cannot take back the async calls held before a restart (try %d): %s; "
                    "no async call is claimed until then; next try in %g s",
                    tries,
                    e.message,
                    pause,
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, TAKE_BACK_MAX)
                continue
            if released:
                log.warning(
                    "took back %d async call(s) this gateway held when it stopped", released
                )
            if tries:
                log.warning("async runner: the store answers again (after %d failed tries)", tries)
            return

    def _held_count(self, name: str) -> int:
        """Calls of ``name`` running, waiting in memory, or being handed over."""
        ahead = self._ahead.get(name)
        return (
            self._running.get(name, 0) + (len(ahead) if ahead else 0) + self._incoming.get(name, 0)
        )

    def _wants(self, sweep: bool) -> dict[str, tuple[int, int]]:
        """What to claim now: function -> (how many, lease ms). A function is claimed for
        once fewer calls than its limit wait in memory, up to :data:`AHEAD` times its limit
        held; only if it may have calls waiting in the store, or on a ``sweep``."""
        if self._ahead_bytes >= CLAIM_BYTES:
            return {}
        wants: dict[str, tuple[int, int]] = {}
        for name, (spec, _) in self.dispatcher.functions.items():
            if not sweep and name not in self._backlog:
                continue
            limit = async_limit(spec)
            ahead = self._ahead.get(name)
            if ahead and len(ahead) >= limit:
                continue
            room = AHEAD * limit - self._held_count(name)
            if room > 0:
                wants[name] = (room, lease_ms(spec))
        return wants

    async def _claim(self, wants: dict[str, tuple[int, int]]) -> list[Claimed]:
        try:
            claimed = await self.store.claim(
                self.owner, wants, max_bytes=CLAIM_BYTES - self._ahead_bytes
            )
        except SwarmlessError as e:
            log.error("claiming async calls failed: %s", e.message)
            await asyncio.sleep(1)
            return []
        got: dict[str, int] = {}
        for call in claimed:
            got[call.function] = got.get(call.function, 0) + 1
            if call.id in self._held:  # its lease ran out while held here: not twice
                log.warning("async call %s: claimed again while held here (lease ran out)", call.id)
                continue
            self._take(call)
        for name, (n, _) in wants.items():
            if got.get(name, 0) < n:
                self._backlog.discard(name)  # the store has no more due: claim on news
            else:
                self._backlog.add(name)
        return claimed

    def _take(self, call: Claimed) -> None:
        """Hold ``call`` (claimed or handed over) and start it if a slot is free."""
        self._held.add(call.id)
        self._ahead.setdefault(call.function, collections.deque()).append(call)
        self._ahead_bytes += len(call.body)
        self._start(call.function)

    def _start(self, name: str) -> None:
        """Start the calls of ``name`` waiting in memory, as many as it has free slots."""
        ahead = self._ahead.get(name)
        if not ahead or self._stopping:
            return
        found = self.dispatcher.functions.get(name)
        limit = in_flight_limit(found[0]) if found is not None else 1
        loop = asyncio.get_running_loop()
        while ahead and self._running.get(name, 0) < limit:
            call = ahead.popleft()
            self._ahead_bytes -= len(call.body)
            self._running[name] = self._running.get(name, 0) + 1
            self._slot_held[call.id] = True
            self._unmarked.add(call.id)
            self._tasks[call.id] = loop.create_task(self._run(call))
        if not ahead:
            del self._ahead[name]
        if self._mark_timer is None and self._unmarked:
            self._mark_timer = loop.call_later(MARK_AFTER, self._mark_started)

    def _mark_started(self) -> None:
        """The records of the calls started since the last marks, and still running, say
        ``running`` (one write for all of them, with the store's next group)."""
        self._mark_timer = None
        started, self._unmarked = self._unmarked, set()
        for call_id in started:
            if call_id in self._slot_held:
                self.store.mark_running(call_id)

    async def _run(self, call: Claimed) -> None:
        try:
            await self._attempts.execute(call, self._free_slot)
        except Exception:
            log.exception("async call %s: unexpected failure (it stays leased and reruns)", call.id)
        finally:
            self._free_slot(call)
            self._held.discard(call.id)
            self._tasks.pop(call.id, None)

    def _free_slot(self, call: Claimed) -> None:
        """The call no longer needs a container: the next call in memory starts, and its
        slot can be claimed again (the durable write of its outcome goes on; its lease
        covers it until then)."""
        if self._slot_held.pop(call.id, False):
            self._running[call.function] -= 1
            self._start(call.function)
            if self._backlog:  # calls wait in the store: claim for the slot
                self._wake.set()

    async def refresh_counts(self) -> None:
        with contextlib.suppress(SwarmlessError):
            self._queued = await self.store.queued_counts()

    def stop_claiming(self) -> None:
        """Take no more calls from the queue (the gateway is shutting down)."""
        self._stopping = True
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """Stop claiming; give back the calls held but not started; wait (bounded) for the
        calls running; the rest stay leased."""
        self._stopping = True
        self._wake.set()
        if self._mark_timer is not None:
            self._mark_timer.cancel()
            self._mark_timer = None
        await self._give_back()
        if self._tasks:
            await asyncio.wait(set(self._tasks.values()), timeout=timeout)
        await self._give_back()  # claimed meanwhile (a claim that was under way)
        await self._callbacks.aclose()

    async def _give_back(self) -> None:
        """The calls waiting in memory go back to the store, claimable at once, their
        attempt not counted (if that fails, they run again once their lease passes, or at
        once when this gateway restarts)."""
        calls = [call for ahead in self._ahead.values() for call in ahead]
        self._ahead.clear()
        self._ahead_bytes = 0
        if not calls:
            return
        ids = [call.id for call in calls]
        self._held.difference_update(ids)
        try:
            back = await self.store.give_back(self.owner, ids)
        except SwarmlessError as e:
            log.warning("could not give back %d async call(s) not started: %s", len(ids), e.message)
            return
        log.info("gave back %d async call(s) claimed but not started", back)
