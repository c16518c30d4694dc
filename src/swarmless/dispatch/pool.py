"""One warm function's queue, its workers and the calls they hold.

The pull model (see docs/runtime-api.md): a call that arrives is handed at once to a poller
that is already waiting, or queued until a worker asks for work. A worker that dies with
calls in hand gives them back to the front of the queue (unless their deadline has passed);
a poller whose connection drops is forgotten before it can be handed a call, and a call
handed to a connection that turned out dead is given back the same way.

A waiting poller is a :class:`Waiter`: a long poll (``POST /runtime/next``, a future its
request awaits, :meth:`WarmPool.next`) or a framed connection of the runtime API (it
writes the call to its socket when handed one: no task, no future per call).

Everything here runs on the event loop; nothing blocks and nothing touches Docker.
:class:`Call`, :class:`Result`, :class:`Worker`, :class:`Waiter` and :data:`RETIRE` are
defined in :mod:`~swarmless.dispatch.pool_types` and re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from swarmless.dispatch.pool_types import RETIRE, Call, Result, Waiter, Worker
from swarmless.dispatch.pool_types import Retire as _Retire
from swarmless.dispatch.pool_types import WorkerState as WorkerState
from swarmless.exceptions import FunctionFailed, QueueFull
from swarmless.records import now_ms
from swarmless.spec import FunctionSpec

__all__ = ["RETIRE", "Call", "Result", "Waiter", "WarmPool", "Worker"]


class _Poll:
    """A long poll (``POST /runtime/next``): its request awaits ``future``."""

    __slots__ = ("future", "worker")

    def __init__(self, worker: Worker, future: asyncio.Future[Call | _Retire]) -> None:
        self.worker = worker
        self.future = future

    def live(self) -> bool:
        return not self.future.done()

    def deliver(self, got: Call | _Retire) -> None:
        self.future.set_result(got)


class WarmPool:
    """The queue and workers of one warm function."""

    def __init__(self, spec: FunctionSpec, version: int) -> None:
        self.spec = spec
        self.version = version
        self.pending: deque[Call] = deque()
        self.workers: dict[str, Worker] = {}
        self._waiters: deque[Waiter] = deque()
        # Polls of paused workers, set aside until they are thawed.
        self._frozen: list[Waiter] = []
        #: Set when work arrives that no ready worker can take: the reconciler wakes up.
        self.wake = asyncio.Event()
        #: The queue length at which the next queued call wakes the reconciler.
        self._wake_at = 1
        self.last_busy = time.monotonic()
        #: Why the last container crashed before it was ready, how many did in a row and
        #: when the last did (cleared by a ready worker); the planner backs off from them.
        self.crashed: str | None = None
        self.crashes = 0
        self.crashed_at: float | None = None
        #: Set (and dropped) at the next change of a container's state: see :meth:`changes`.
        self._change: asyncio.Event | None = None
        #: Containers of workers no longer counted (killed) that are still being stopped.
        self.stopping = 0

    def update(self, spec: FunctionSpec, version: int) -> None:
        """A new version was deployed: containers started from now on run it (the
        reconciler, woken, rolls the others)."""
        self.spec, self.version = spec, version
        self.wake.set()

    def fail_pending(self, error: Callable[[], BaseException]) -> None:
        """Fail every queued call with a new ``error()`` (the function was removed, the
        gateway is shutting down); the calls in workers' hands go on."""
        while self.pending:
            call = self.pending.popleft()
            if not call.finished:
                call.future.set_exception(error())

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Fail every call, queued or in a worker's hand, with a new ``error()`` (the
        gateway stopped waiting for them: it is shutting down)."""
        self.fail_pending(error)
        for worker in self.workers.values():
            for call in worker.in_hand.values():
                if not call.finished:
                    call.future.set_exception(error())

    def retire_all(self) -> list[Worker]:
        """Drain every worker (they finish what they hold, then exit); returns them."""
        workers = list(self.workers.values())
        for w in workers:
            self.retire(w)
        return workers

    def changes(self) -> asyncio.Event:
        """An event set at the next change of the containers: one added, ready, paused,
        thawed, draining, gone, or crashed before it was ready (for whoever waits for a
        count, :meth:`swarmless.scaling.reconciler.Reconciler.settled`; it looks again)."""
        if self._change is None:
            self._change = asyncio.Event()
        return self._change

    def _changed(self) -> None:
        change, self._change = self._change, None
        if change is not None:
            change.set()

    def stopping_while(self, stop: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None]:
        """``stop`` (which stops the container of a worker the pool no longer counts),
        counted in :attr:`stopping` from now until it ends: a scale that waits for N
        containers waits for that one to go too. Counted at once, not when the task that
        runs it begins (a waiter woken by the worker's going must see it)."""
        self.stopping += 1
        return self._counted(stop)

    async def _counted(self, stop: Coroutine[Any, Any, None]) -> None:
        try:
            await stop
        finally:
            self.stopping -= 1
            self._changed()

    def crash(self, reason: str) -> None:
        """A container died before it asked for work: fail the queue, remember the crash."""
        self.crashed = reason
        self.crashes += 1
        self.crashed_at = time.monotonic()
        self._changed()
        while self.pending:
            call = self.pending.popleft()
            if not call.finished:
                call.future.set_exception(FunctionFailed(reason))

    # -- calls ---------------------------------------------------------------------

    def submit(self, call: Call) -> None:
        """Hand ``call`` to a waiting poller, or queue it; raises QueueFull when full."""
        self.last_busy = time.monotonic()
        if self._hand_over(call):
            return
        if len(self.pending) >= self.spec.queue_size:
            raise QueueFull(
                f"function {self.spec.name!r} has {len(self.pending)} calls queued "
                f"(queue_size {self.spec.queue_size}); retry later",
                retry_after=1.0,
            )
        if not self.pending:
            self._wake_at = 1
        self.pending.append(call)
        if len(self.pending) >= self._wake_at:
            # The reconciler hears of a queue that starts or doubles, not of every call
            # (each wake is a planning step; it also looks every scaling interval).
            self._wake_at = 2 * len(self.pending)
            self.wake.set()

    def requeue(self, call: Call) -> None:
        """Give a call back to the front of the queue (its worker vanished)."""
        if call.worker is not None:
            call.worker.in_hand.pop(call.id, None)
            call.worker = None
        if call.finished or time.monotonic() >= call.deadline:
            return
        call.record.attempt += 1
        if not self._hand_over(call):
            self.pending.appendleft(call)
            self.wake.set()

    def _hand_over(self, call: Call) -> bool:
        """Give ``call`` to the live poll of a ready worker that began waiting last, if any.

        Last in, first out: the poller that has just answered takes the next call, so a
        light load keeps to a few warm pollers (and containers) and leaves the others
        asleep, instead of waking every container in turn."""
        while self._waiters:
            waiter = self._waiters.pop()
            if not waiter.live():
                continue
            worker = waiter.worker
            if worker.state != "ready":
                if worker.state == "draining":  # not expected: retire() answered it
                    waiter.deliver(RETIRE)
                continue
            self._assign(worker, call)
            waiter.deliver(call)
            return True
        return False

    def forget(self, call: Call) -> Worker | None:
        """Take a finished (timed out) call out of the pool; returns the worker holding it."""
        with_worker = call.worker
        if with_worker is not None:
            with_worker.in_hand.pop(call.id, None)
        else:
            with contextlib.suppress(ValueError):
                self.pending.remove(call)
        return with_worker

    def _assign(self, worker: Worker, call: Call) -> None:
        now = time.monotonic()
        call.worker = worker
        worker.in_hand[call.id] = call
        worker.last_active = worker.last_call = now
        rec = call.record
        rec.status = "running"
        rec.started_at = now_ms()
        rec.wait_ms = round((now - call.queued) * 1000, 3)
        rec.container = worker.container[:12] if worker.container else worker.id
        rec.cold = worker.created > call.queued
        if rec.cold and worker.ready_at is not None:
            rec.init_ms = round((worker.ready_at - worker.created) * 1000, 3)

    # -- workers -------------------------------------------------------------------

    def add_worker(self, worker: Worker) -> None:
        self.workers[worker.id] = worker
        self._changed()

    def launched(self, worker: Worker, container: str) -> None:
        """The backend started ``worker``'s container: ``container`` is its id."""
        worker.container = container
        worker.launched_at = time.monotonic()

    def take(self, worker: Worker) -> Call | _Retire | None:
        """What ``worker`` gets at once: a queued call, RETIRE, or None (it must wait)."""
        now = time.monotonic()
        worker.last_active = now
        if worker.state == "starting":
            worker.state = "ready"
            worker.ready_at = now
            self.crashed, self.crashes, self.crashed_at = None, 0, None
            self._changed()
        if worker.state in ("draining", "gone"):
            return RETIRE
        call = self._next_pending()
        if call is not None:
            self._assign(worker, call)
        return call

    def wait(self, waiter: Waiter) -> None:
        """``waiter`` waits for the next call of its worker (which :meth:`take` found none
        for): it is handed one, or RETIRE, with :meth:`Waiter.deliver`."""
        if waiter.worker.state == "paused":
            self._frozen.append(waiter)
        else:
            self._waiters.append(waiter)

    def unwait(self, waiter: Waiter) -> None:
        """``waiter`` no longer waits (its connection closed): forget it."""
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        with contextlib.suppress(ValueError):
            self._frozen.remove(waiter)

    async def next(self, worker: Worker, timeout: float) -> Call | _Retire | None:
        """The next call for ``worker``: waits up to ``timeout`` (None: nothing came)."""
        got = self.take(worker)
        if got is not None:
            return got
        poll = _Poll(worker, asyncio.get_running_loop().create_future())
        self.wait(poll)
        try:
            done, _ = await asyncio.wait({poll.future}, timeout=timeout)
        except asyncio.CancelledError:
            self._drop_poll(poll)
            raise
        if not done:
            self._drop_poll(poll)
            return None
        return poll.future.result()

    def _drop_poll(self, poll: _Poll) -> None:
        fut = poll.future
        if fut.done() and not fut.cancelled():
            got = fut.result()
            if isinstance(got, Call):  # handed over just as the poller went away
                self.requeue(got)
        else:
            fut.cancel()
        self.unwait(poll)

    def complete(self, worker: Worker, call_id: str, result: Result) -> Call | None:
        """A worker posted the result of ``call_id``."""
        worker.last_active = worker.last_call = time.monotonic()
        call = worker.in_hand.pop(call_id, None)
        if call is not None:
            call.worker = None
            if not call.finished:
                call.future.set_result(result)
        return call

    def pause(self, worker: Worker) -> None:
        """``worker``'s container is being frozen: hand it nothing until :meth:`thaw`."""
        if worker.state != "ready" or worker.busy:
            return
        worker.state = "paused"
        self._changed()
        kept: deque[Waiter] = deque()
        for waiter in self._waiters:
            (self._frozen.append if waiter.worker is worker else kept.append)(waiter)
        self._waiters = kept

    def thaw(self, worker: Worker) -> None:
        """``worker``'s container runs again: its polls take the queue's calls."""
        if worker.state != "paused":
            return
        worker.state = "ready"
        worker.last_active = time.monotonic()
        self._changed()
        mine = [w for w in self._frozen if w.worker is worker]
        self._frozen = [w for w in self._frozen if w.worker is not worker]
        for waiter in mine:
            if not waiter.live():
                continue
            call = self._next_pending()
            if call is None:
                self._waiters.appendleft(waiter)
            else:
                self._assign(worker, call)
                waiter.deliver(call)

    def _next_pending(self) -> Call | None:
        while self.pending:
            call = self.pending.popleft()
            if not call.finished:
                return call
        return None

    def retire(self, worker: Worker) -> None:
        """Drain ``worker``: it finishes what it holds and then exits on its next poll."""
        if worker.state in ("draining", "gone"):
            return
        worker.state = "draining"
        self._changed()
        kept: deque[Waiter] = deque()
        for waiter in self._waiters:
            if waiter.worker is worker:
                if waiter.live():
                    waiter.deliver(RETIRE)
            else:
                kept.append(waiter)
        self._waiters = kept
        # A paused worker's polls too: their requests end now (a shutdown does not wait
        # for them), the frozen container reads the answer if it is ever thawed.
        for waiter in self._frozen:
            if waiter.worker is worker and waiter.live():
                waiter.deliver(RETIRE)
        self._frozen = [w for w in self._frozen if w.worker is not worker]

    def gone(self, worker: Worker, *, requeue: bool = True) -> list[Call]:
        """``worker``'s container is gone: forget it and requeue what it held (or not:
        the caller fails those calls)."""
        worker.state = "gone"
        self.workers.pop(worker.id, None)
        self._changed()
        self._waiters = deque(w for w in self._waiters if w.worker is not worker)
        self._frozen = [w for w in self._frozen if w.worker is not worker]
        held = list(worker.in_hand.values())
        if requeue:
            for call in held:
                self.requeue(call)
        else:
            worker.in_hand.clear()
            for call in held:
                call.worker = None
        return held

    # -- observations ----------------------------------------------------------------

    def polling(self) -> set[str]:
        """The workers with a poll waiting for work right now (alive as far as we know)."""
        return {w.worker.id for w in self._waiters if w.live()}

    def can_hand_over(self) -> bool:
        """Whether a call submitted now goes at once to a ready worker's waiting poll."""
        return any(w.live() and w.worker.state == "ready" for w in self._waiters)

    def counts(self) -> dict[str, int]:
        """Containers by state and calls by stage, for the autoscaler and metrics."""
        ready = starting = draining = busy = paused = 0
        for w in self.workers.values():
            if w.state == "paused":
                paused += 1
            elif w.state == "ready":
                ready += 1
                busy += w.busy
            elif w.state == "starting":
                starting += 1
            elif w.state == "draining":
                draining += 1
        in_flight = sum(len(w.in_hand) for w in self.workers.values())
        queued = sum(1 for c in self.pending if not c.finished)
        return {
            "ready": ready,
            "starting": starting,
            "draining": draining,
            "paused": paused,
            "busy": busy,
            "in_flight": in_flight,
            "queued": queued,
        }
