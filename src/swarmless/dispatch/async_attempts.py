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
the window's end and go to the store as one op (:meth:`~swarmless.store.Store.finish_many`:
one future for the lot, not one per call), so they share one group commit (and its
statements) rather than riding, a few at a time, on every commit of the calls being
accepted. If the database refuses that op, its outcomes are written again one by one, so
that only the one refused fails. The call's slot is free meanwhile; until its outcome is
committed the call stays leased (a crash then runs it again: at-least-once).

Then the callback, if one was asked for (:mod:`swarmless.dispatch.async_callbacks`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from swarmless.dispatch.async_callbacks import CallbackSender
from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.dispatch.request import Request
from swarmless.exceptions import (
    EngineUnavailable,
    FunctionNotFound,
    GatewayUnavailable,
    QueueFull,
    SwarmlessError,
)
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


#: A success waiting for its window's end: its record, its answer, what its call awaits.
_Outcome = tuple[InvocationRecord, StoredResult, "asyncio.Future[None]"]


def _settle(outcomes: list[_Outcome], error: BaseException | None) -> None:
    """The futures of ``outcomes`` done: written (``error`` None), or failed with it."""
    for _, _, done in outcomes:
        if done.done():
            continue  # its call went away (cancelled): its outcome was written all the same
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


class Attempts:
    """Runs async calls through the dispatcher and writes each outcome (retry, dead,
    succeeded) to the store, then sends its callback."""

    def __init__(self, dispatcher: Dispatcher, store: Store, callbacks: CallbackSender) -> None:
        self.dispatcher = dispatcher
        self.store = store
        self.callbacks = callbacks
        #: When the last outcomes went to the store (loop time), and those waiting for
        #: the current window's end, each with the future its call awaits (None: no
        #: window open).
        self._released = -OUTCOME_WINDOW
        self._waiting: list[_Outcome] | None = None
        #: The writes of windows under way (one task per window, not per call).
        self._writing: set[asyncio.Task[None]] = set()

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
        await self._outcome(rec, result)
        if call.callback_url:
            await self.callbacks.send(call, rec, result)

    def _outcome(self, rec: InvocationRecord, result: StoredResult) -> Awaitable[None]:
        """Write a success durably (:data:`OUTCOME_WINDOW`): at once after a quiet moment,
        else with the others of the window, at its end; done once it is committed."""
        loop = asyncio.get_running_loop()
        if self._waiting is None:
            now = loop.time()
            if now >= self._released + OUTCOME_WINDOW:
                self._released = now
                return self.store.finish(rec, result)
            self._waiting = []
            loop.call_at(self._released + OUTCOME_WINDOW, self._open)
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append((rec, result, done))
        return done

    def _open(self) -> None:
        """The window's end: the outcomes waiting go to the store, together."""
        loop = asyncio.get_running_loop()
        self._released = loop.time()
        waiting, self._waiting = self._waiting or [], None
        if waiting:
            task = loop.create_task(self._write(waiting))
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)

    async def _write(self, waiting: list[_Outcome]) -> None:
        """The outcomes of one window in one op; each call's future is done when its
        outcome is committed (or failed: one the database refuses fails alone)."""
        try:
            await self.store.finish_many([(rec, result) for rec, result, _ in waiting])
        except GatewayUnavailable as e:  # the database stayed away: none was written
            _settle(waiting, e)
        except SwarmlessError as e:
            if len(waiting) == 1:
                _settle(waiting, e)
                return
            log.warning("%d async outcomes refused together (%s): one by one", len(waiting), e)
            for rec, result, done in waiting:
                try:
                    await self.store.finish(rec, result)
                except SwarmlessError as one:
                    _settle([(rec, result, done)], one)
                else:
                    _settle([(rec, result, done)], None)
        except BaseException as e:  # cancelled (the gateway stops): not written
            _settle(waiting, RuntimeError(f"outcome not written: {type(e).__name__}"))
            raise
        else:
            _settle(waiting, None)

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
