"""One async call run and its outcome written durably (the async runner's attempt).

- success: record ``succeeded``, the answer kept for ``Invocation.result()``;
- failure with retries left: back to the queue after an exponential backoff with jitter
  (``backoff x 2^(attempt-1) x [0.5, 1.5)``), the record saying why;
- retries spent, or older than ``max_age``: ``dead`` (the dead letter), redrivable;
- too busy, shutting down, or the Docker Engine does not answer: back to the queue, not
  counted as an attempt;
- a call whose runs were lost with their gateway (killed, crashed) :data:`POISON_STARTS`
  times goes to the dead letter instead of running again: it may be what brings the
  gateway down, and start-up must not be crash-looped by the calls it takes back (the
  count: the call's claims less the attempts whose outcome was written).

Outcomes of calls that end together are written together: the first success after a
quiet moment is written at once, the ones after it within :data:`OUTCOME_WINDOW` wait for
the window's end and go to the store at the same moment, so they share one group commit
(and its statements) rather than riding, a few at a time, on every commit of the calls
being accepted. The call's slot is free meanwhile; until its outcome is committed the call
stays leased (a crash then runs it again: at-least-once).

Then the callback, if one was asked for (:mod:`swarmless.dispatch.async_callbacks`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from swarmless.dispatch.async_callbacks import CallbackSender
from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.dispatch.request import Request
from swarmless.exceptions import EngineUnavailable, FunctionNotFound, QueueFull, SwarmlessError
from swarmless.records import InvocationRecord, now_ms
from swarmless.spec import FunctionSpec
from swarmless.store import Claimed, Store, StoredResult

__all__ = ["POISON_STARTS", "Attempts"]

log = logging.getLogger("swarmless.async")

#: Runs of one call lost with their gateway (killed, crashed) before it is dead.
POISON_STARTS = 3
#: Successful outcomes go to the store at most once per this many seconds (the first
#: after a quiet moment at once; those after it together, at the window's end).
OUTCOME_WINDOW = 0.02


class Attempts:
    """Runs async calls through the dispatcher and writes each outcome (retry, dead,
    succeeded) to the store, then sends its callback."""

    def __init__(self, dispatcher: Dispatcher, store: Store, callbacks: CallbackSender) -> None:
        self.dispatcher = dispatcher
        self.store = store
        self.callbacks = callbacks
        #: When the last outcomes went to the store (loop time), and those waiting for
        #: the current window's end (None: no window open).
        self._released = -OUTCOME_WINDOW
        self._waiting: list[asyncio.Future[None]] | None = None

    async def execute(self, call: Claimed, free_slot: Callable[[Claimed], None]) -> None:
        """Run ``call`` through the dispatcher and write its outcome durably; ``free_slot``
        is called as soon as the call no longer needs a container (before the write)."""
        rec = InvocationRecord(
            id=call.id,
            function=call.function,
            mode="",
            kind="async",
            queued_at=call.enqueued_at,
            attempt=call.attempt,
            request_size=len(call.body),
            parent=call.parent,
            late=call.late,
        )
        try:
            spec, _ = self.dispatcher.get(call.function)
        except FunctionNotFound as e:
            rec.status, rec.error = "dead", e.message
            rec.finished_at = now_ms()
            await self.store.finish(rec)
            return
        rec.mode = spec.mode
        lost = await self._lost_runs(call) if call.attempt > POISON_STARTS else 0
        if lost >= POISON_STARTS:
            rec.status = "dead"
            rec.error = (
                f"dead after {lost} runs lost with their gateway (killed or crashed while "
                "the call ran): not run again, it may be what stops the gateway; redrive it "
                "once that is fixed"
            )
            rec.finished_at = now_ms()
            log.error("async call %s: %s", call.id, rec.error)
            await self.store.finish(rec)
            await self.callbacks.send(call, rec, None)
            return
        if now_ms() - call.enqueued_at > spec.max_age * 1000:
            rec.status = "dead"
            rec.error = f"older than max_age ({spec.max_age:g}s) before it could run"
            rec.finished_at = now_ms()
            await self.store.finish(rec)
            await self.callbacks.send(call, rec, None)
            return
        request = Request(
            method=call.method,
            path=call.path,
            query=call.query,
            headers=call.headers,
            body=call.body,
        )
        try:
            response = await self.dispatcher.invoke(call.function, request, record=rec)
        except SwarmlessError as e:
            free_slot(call)
            await self._failed(call, rec, spec, e)
            return
        free_slot(call)
        result = StoredResult(status=response.status, headers=response.headers, body=response.body)
        wait = self._window()
        if wait is not None:
            await wait
        await self.store.finish(rec, result)
        if call.callback_url:
            await self.callbacks.send(call, rec, result)

    def _window(self) -> asyncio.Future[None] | None:
        """What this outcome waits for before it goes to the store (:data:`OUTCOME_WINDOW`):
        None when it may go at once."""
        loop = asyncio.get_running_loop()
        if self._waiting is None:
            now = loop.time()
            if now >= self._released + OUTCOME_WINDOW:
                self._released = now
                return None
            self._waiting = []
            loop.call_at(self._released + OUTCOME_WINDOW, self._open)
        wait: asyncio.Future[None] = loop.create_future()
        self._waiting.append(wait)
        return wait

    def _open(self) -> None:
        """The window's end: the outcomes waiting go to the store, together."""
        self._released = asyncio.get_running_loop().time()
        waiting, self._waiting = self._waiting or [], None
        for wait in waiting:
            if not wait.done():
                wait.set_result(None)

    async def _lost_runs(self, call: Claimed) -> int:
        """How many earlier runs of ``call`` ended with no outcome written (their gateway
        died): its claims before this one, less the attempt of the last failure written
        (read only when the claims alone could reach :data:`POISON_STARTS`)."""
        before = call.attempt - 1
        if before < POISON_STARTS:
            return 0
        try:
            stored = await self.store.get_invocation(call.id)
        except SwarmlessError as e:
            log.error("async call %s: could not read its record: %s", call.id, e.message)
            return 0
        written = stored.attempt if stored is not None and stored.error else 0
        return before - written

    async def _failed(
        self, call: Claimed, rec: InvocationRecord, spec: FunctionSpec, e: SwarmlessError
    ) -> None:
        # Too busy, shutting down, or no engine is not the function's fault: retry soon,
        # not counted.
        not_counted = isinstance(e, QueueFull | EngineUnavailable) or self.dispatcher.closing
        if not_counted or call.attempt <= spec.retries:
            delay = 1.0 if not_counted else spec.backoff * 2 ** (call.attempt - 1)
            delay *= 0.5 + random.random()
            rec.status = "queued"
            rec.error = f"attempt {call.attempt} failed: {e.message}"
            if not_counted:
                rec.attempt -= 1
            await self.store.retry_later(rec, now_ms() + int(delay * 1000), uncount=not_counted)
            return
        rec.status = "dead"
        rec.error = f"dead after {call.attempt} attempt(s): {e.message}"
        await self.store.finish(rec)
        await self.callbacks.send(call, rec, None)
