"""The dispatcher: every invocation goes through here, and it owns the deadline.

- ``warm`` functions: the call goes into the function's :class:`WarmPool`; a worker pulls
  it (:mod:`swarmless.gateway.runtime_api`); the dispatcher waits for the result until the
  function's timeout, then answers 504, takes the call out of the pool and has the worker
  registry recycle the worker that held it.
- ``oneshot`` / ``cgi`` functions: one fresh container per call
  (:class:`~swarmless.dispatch.oneshot.OneShotCalls`: at most ``max_containers`` at once,
  the rest waiting up to ``queue_size``, then 429).

It also keeps the table of deployed functions (deploy, update, remove) and the count of
calls in flight (drain on shutdown). Its parts, given by the gateway's wiring
(:mod:`swarmless.gateway.active`), and what each owns:

- :mod:`~swarmless.dispatch.table`: the function table (deploy, update, remove), the
  base of :class:`Dispatcher`;
- :mod:`~swarmless.dispatch.deadlines`: the warm calls' deadlines, one timer for all;
- :mod:`~swarmless.dispatch.pool`: one warm function's queue, its workers, their calls;
- :mod:`~swarmless.dispatch.workers`: the worker registry (ids, tokens, deaths);
- :mod:`~swarmless.dispatch.oneshot`: one-shot execution;
- :mod:`~swarmless.dispatch.recorder`: records and logs, written behind the calls;
- :mod:`~swarmless.dispatch.background`: background tasks, held and watched;
- :mod:`~swarmless.dispatch.request`: a call's :class:`Request` and :class:`Response`.

The reconciler (``swarmless.scaling.reconciler``) sizes warm pools through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

from swarmless.backends.base import Backend, ContainerInfo
from swarmless.dispatch.background import Background
from swarmless.dispatch.deadlines import Deadlines
from swarmless.dispatch.metrics import Metrics
from swarmless.dispatch.oneshot import OneShotCalls
from swarmless.dispatch.pool import Call, Result, Worker
from swarmless.dispatch.recorder import Recorder
from swarmless.dispatch.request import Request, Response
from swarmless.dispatch.table import FunctionTable
from swarmless.dispatch.workers import WorkerRegistry
from swarmless.engine import LABEL_CALL, engine_address
from swarmless.exceptions import (
    ContainerError,
    EngineUnavailable,
    FunctionFailed,
    GatewayUnavailable,
    InvocationTimeout,
    PayloadTooLarge,
    SwarmlessError,
)
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.spec import FunctionSpec
from swarmless.store import Store

__all__ = ["Dispatcher", "Request", "Response", "Result"]

log = logging.getLogger("swarmless.dispatch")

#: Seconds the drain gives the answers of the calls it stopped waiting for to go out.
ANSWER_GRACE = 1.0
#: json.dumps(..., separators=...) builds an encoder per call; this one is built once.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


class Dispatcher(FunctionTable):
    """Routes invocations to containers and keeps the records of what happened."""

    def __init__(
        self,
        *,
        store: Store,
        backend: Backend,
        workers: WorkerRegistry,
        oneshot: OneShotCalls,
        recorder: Recorder,
        background: Background,
        metrics: Metrics | None = None,
        runtime_url: str = "",
    ) -> None:
        super().__init__(
            store=store, backend=backend, workers=workers, oneshot=oneshot, background=background
        )
        self.metrics = metrics or Metrics()
        self.runtime_url = runtime_url
        self._recorder = recorder
        self._inflight = 0
        self._deadlines = Deadlines()
        # Read when metrics are scraped: nothing to count on the hot path.
        self.metrics.in_progress.set_function(lambda: self._inflight)
        #: The calls in flight, id -> function, from their start until their record is
        #: kept (a one-shot container of none of them is an orphan).
        self._calls: dict[str, str] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        #: Set when the gateway stops waiting for the calls in flight (drain deadline),
        #: after waiting that many seconds.
        self._stopped: asyncio.Future[None] | None = None
        self._waited = 0.0
        #: The calls in flight when it stopped waiting (their one-shot containers go too).
        self._abandoned: set[str] = set()

    # -- invocations -----------------------------------------------------------------

    async def invoke(
        self,
        name: str,
        request: Request,
        *,
        call_id: str | None = None,
        parent: str | None = None,
        record: InvocationRecord | None = None,
    ) -> Response:
        """Run one invocation of ``name`` and answer with what the function answered.

        Sync calls get a new record, written behind. An async call brings its ``record``
        (the async runner writes it, durably, with the call's fate).
        """
        if self._closing:
            raise GatewayUnavailable("the gateway is shutting down; retry")
        spec, _ = self.get(name)
        if len(request.body) > spec.max_body:
            raise PayloadTooLarge(
                f"request body of {len(request.body)} bytes is over the limit of "
                f"{spec.max_body} bytes for function {name!r} (max_body)"
            )
        rec = record or InvocationRecord(
            id=call_id or new_call_id(),
            function=name,
            mode=spec.mode,
            queued_at=now_ms(),
            request_size=len(request.body),
            parent=parent,
        )
        rec.mode = spec.mode
        rec.error = None
        t0 = time.monotonic()
        self._inflight += 1
        self._calls[rec.id] = name
        self._idle.clear()
        try:
            if spec.mode == "warm":
                response = await self._invoke_warm(spec, rec, request)
            else:
                response = await self._invoke_oneshot(spec, rec, request)
            rec.status = "succeeded"
            rec.http_status = response.status
            rec.response_size = len(response.body)
            return response
        except SwarmlessError as e:
            e.invocation = rec.id
            if isinstance(e, ContainerError):
                rec.exit_code = e.exit_status
            rec.status = "timeout" if isinstance(e, InvocationTimeout) else "failed"
            rec.error = rec.error or e.message
            rec.http_status = e.status_code
            raise
        except asyncio.CancelledError:
            rec.status = "cancelled"
            rec.error = "the client went away"
            raise
        finally:
            rec.finished_at = now_ms()
            if rec.started_at is not None and rec.run_ms is None:
                rec.run_ms = float(rec.finished_at - rec.started_at)
            if record is None:
                self._recorder.record(rec)
            self.metrics.observe(rec, time.monotonic() - t0)
            self._inflight -= 1
            self._calls.pop(rec.id, None)
            if self._inflight == 0:
                self._idle.set()

    def in_flight(self, call_id: str) -> str | None:
        """The function of call ``call_id`` while this gateway runs it: from its start
        until its record is kept (buffered: :meth:`Store.get_invocation` finds it from
        then on), so that no moment of a call is known to neither; None for any other."""
        return self._calls.get(call_id)

    async def _invoke_warm(
        self, spec: FunctionSpec, rec: InvocationRecord, request: Request
    ) -> Response:
        pool = self.pools[spec.name]
        event = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": [[k, v] for k, v in request.headers],
            "prefix": f"/function/{spec.name}" if request.prefix is None else request.prefix,
        }
        loop = asyncio.get_running_loop()
        call = Call(
            record=rec,
            event=_compact_json(event).encode(),
            body=request.body,
            deadline=time.monotonic() + spec.timeout,
            deadline_ms=now_ms() + int(spec.timeout * 1000),
            future=loop.create_future(),
        )
        if pool.crashed is not None and not pool.counts()["ready"]:
            raise FunctionFailed(pool.crashed)
        down = self.backend.engine_down
        if down is not None and not pool.can_hand_over():
            raise self._engine_unavailable(down)
        pool.submit(call)
        # At the deadline the call's future gets a TimeoutError, unless it was answered
        # first: one timer for all the calls in flight, not one per call.
        self._deadlines.add(call.future, call.deadline)
        try:
            result = await call.future
        except TimeoutError:
            worker = pool.forget(call)
            if worker is not None:
                # The worker is stuck in this call: recycle it, its other calls go back.
                self._workers.recycle(pool, worker)
            where = "while it ran" if worker is not None else "before a container took it"
            raise InvocationTimeout(
                f"function {spec.name!r} did not answer within {spec.timeout:g}s ({where})",
                timeout=spec.timeout,
            ) from None
        except asyncio.CancelledError:
            call.future.cancel()
            pool.forget(call)
            raise
        finally:
            self._deadlines.discard(call.future)
        if result.error is not None:
            rec.exit_code = result.exit_code
            detail = result.body[-4000:].decode("utf-8", "replace").strip()
            rec.error = f"{result.error}\n{detail}" if detail else result.error
            if result.exit_code and result.status != 504:  # a command that exited non-zero
                raise ContainerError(
                    function=spec.name,
                    exit_status=result.exit_code,
                    stderr=result.body[-2000:],
                )
            if result.status == 504:  # the runtime stopped it at the call's deadline
                raise InvocationTimeout(
                    f"function {spec.name!r} did not finish within {spec.timeout:g}s: "
                    f"{result.error}",
                    timeout=spec.timeout,
                )
            raise FunctionFailed(f"function {spec.name!r} failed: {result.error}")
        return Response(
            status=result.status, headers=result.headers, body=result.body, call_id=rec.id
        )

    async def _invoke_oneshot(
        self, spec: FunctionSpec, rec: InvocationRecord, request: Request
    ) -> Response:
        down = self.backend.engine_down
        if down is not None:
            raise self._engine_unavailable(down)
        stopped = self._stopped_future()
        task = asyncio.ensure_future(self._oneshot.invoke(spec, rec, request))
        waited: set[asyncio.Future[Any]] = {task, stopped}
        try:
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not task.done():  # the gateway stopped waiting (its drain deadline passed)
            task.cancel()
            raise self._stopped_error(spec.name)
        return task.result()

    def _engine_unavailable(self, down: str) -> EngineUnavailable:
        return EngineUnavailable(
            engine_address(self.backend.settings.docker_host),
            down,
            hint=(
                "Calls that need a container are refused until it answers again (retry "
                "later); async calls are still queued, and run once it is back."
            ),
        )

    def _stopped_future(self) -> asyncio.Future[None]:
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
        return self._stopped

    def _stopped_error(self, name: str) -> InvocationTimeout:
        return InvocationTimeout(
            f"the gateway shut down before function {name!r} answered (it waited "
            f"{self._waited:.1f}s more for the calls in flight: its drain timeout); the "
            "container was stopped",
            timeout=self._waited,
        )

    # -- the engine ------------------------------------------------------------------

    @property
    def engine_down(self) -> str | None:
        """Why the engine does not answer (None: it does)."""
        return self.backend.engine_down

    def engine_lost(self, down: str) -> None:
        """The engine stopped answering: the calls queued for a container that cannot start
        now fail at once (503); those in hand wait for their worker, or their deadline."""
        for pool in self.pools.values():
            pool.fail_pending(lambda: self._engine_unavailable(down))

    def resync(self, found: list[ContainerInfo], *, asked: float) -> list[str]:
        """The engine answers again and lists ``found`` (asked for at ``asked``, monotonic):
        workers that died meanwhile are forgotten (their calls fail, or run again when
        idempotent); returns the containers nobody owns any more (workers no longer known,
        one-shot containers of calls no longer in flight), to be removed."""
        orphans = self._workers.resync(found, asked=asked)
        for c in found:
            call = c.labels.get(LABEL_CALL)
            if c.kind in ("oneshot", "cgi") and call is not None and call not in self._calls:
                orphans.append(c.id)
        for pool in self.pools.values():
            pool.wake.set()
        return orphans

    def worker_lost(self, worker: Worker) -> None:
        """The engine no longer runs ``worker``'s container (a reconciler asked)."""
        self._workers.lost(worker)

    # -- lifecycle -------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Containers and calls per function, for metrics and ``ls``."""
        out: dict[str, dict[str, int]] = {}
        for name in self.functions:
            pool = self.pools.get(name)
            out[name] = pool.counts() if pool is not None else self._oneshot.counts(name)
        return out

    @property
    def closing(self) -> bool:
        """True once the gateway stopped taking calls."""
        return self._closing

    def begin_shutdown(self) -> None:
        """Refuse new calls, fail the queued ones, retire every worker (they drain)."""
        self._closing = True
        for pool in self.pools.values():
            pool.fail_pending(lambda: GatewayUnavailable("the gateway is shutting down; retry"))
            pool.retire_all()

    async def drain(self, timeout: float) -> None:
        """Stop taking calls and wait (up to ``timeout``) for those in flight; then stop
        waiting for them: each still in flight is answered 504 at once (its container is
        stopped with the others by :meth:`close`)."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        if self._idle.is_set():
            return
        self._waited = timeout
        self._abandoned.update(self._calls)
        stopped = self._stopped_future()
        if not stopped.done():
            stopped.set_result(None)
        for name, pool in self.pools.items():
            pool.fail_all(functools.partial(self._stopped_error, name))
        # The answers go out now; give their handlers a moment to send them.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), ANSWER_GRACE)

    async def close(self) -> None:
        """Stop every worker container, and the one-shot containers of the calls the drain
        stopped waiting for; wait for the work still running in the background (a start
        removes what it made); flush the store."""
        stops: list[Coroutine[Any, Any, None]] = []
        for pool in self.pools.values():
            stops.extend(self.stop_worker(w) for w in pool.retire_all())
            pool.fail_pending(lambda: SwarmlessError("the gateway is shutting down"))
        if self._abandoned:
            with contextlib.suppress(SwarmlessError):
                for c in await self.backend.list_containers():
                    if c.kind != "worker" and c.labels.get(LABEL_CALL) in self._abandoned:
                        stops.append(self.backend.stop_container(c.id))
        await asyncio.gather(*stops, return_exceptions=True)
        await self._settle()
        await self._recorder.flush()

    async def _settle(self) -> None:
        """Wait for the background work still running (``engine_timeout`` at most; not for
        an engine known down, whose next gateway removes what is left): a container start
        sees the gateway closing when it returns and removes its container; cut off by the
        stop's end, that container would run on with nobody to remove it."""
        if self.backend.engine_down is not None:
            return
        left = await self._background.settle(self.backend.settings.engine_timeout)
        if left:
            log.warning("stopped with %d background task(s) still running", left)
