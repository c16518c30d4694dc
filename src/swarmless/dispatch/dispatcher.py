"""The dispatcher: every invocation goes through here, and it owns the deadline.

- ``warm`` functions: the call goes into the function's :class:`WarmPool`; a worker pulls
  it; the dispatcher waits for the result until the function's timeout, then answers 504,
  takes the call out of the pool and recycles the worker that held it.
- ``oneshot`` / ``cgi`` functions: one fresh container per call, at most
  ``max_containers`` at once, the rest waiting (up to ``queue_size``, then 429).

Records are written behind (sync calls are never slowed by the store); per-call logs are
stored beside them. The reconciler (``swarmless.scaling.reconciler``) sizes warm pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from swarmless.backends.base import Backend
from swarmless.dispatch.cgi import cgi_environ, parse_cgi_response
from swarmless.dispatch.metrics import Metrics
from swarmless.dispatch.pool import Call, Result, WarmPool, Worker
from swarmless.exceptions import (
    ContainerError,
    FunctionFailed,
    FunctionNotFound,
    GatewayUnavailable,
    InvalidArgument,
    InvocationTimeout,
    OOMKilled,
    PayloadTooLarge,
    QueueFull,
    SpecError,
    SwarmlessError,
)
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.spec import FunctionSpec
from swarmless.store import Store

__all__ = ["Dispatcher", "Request", "Response", "Result"]

log = logging.getLogger("swarmless.dispatch")

#: Exit statuses of a container stopped from outside (SIGKILL, SIGTERM): not a crash.
_KILLED = (137, 143)

#: Output kept per stream in an invocation's logs.
LOG_LIMIT = 1 << 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
    """An HTTP request as the input of a function."""

    method: str = "POST"
    path: str = ""
    query: str = ""
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    remote_addr: str = "127.0.0.1"
    remote_port: int = 0
    server_name: str = "127.0.0.1"
    server_port: int = 8080
    scheme: str = "http"

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for k, v in self.headers:
            if k.lower() == lower:
                return v
        return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Response:
    """What a function answered."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    call_id: str


@dataclasses.dataclass(eq=False)
class _OnceSlots:
    """Concurrency slots of a oneshot/cgi function."""

    limit: int
    running: int = 0
    waiting: int = 0
    freed: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)


class Dispatcher:
    """Routes invocations to containers and keeps the records of what happened."""

    def __init__(
        self,
        *,
        store: Store,
        backend: Backend,
        metrics: Metrics | None = None,
        runtime_url: str = "",
    ) -> None:
        self.store = store
        self.backend = backend
        self.metrics = metrics or Metrics()
        self.runtime_url = runtime_url
        self.functions: dict[str, tuple[FunctionSpec, int]] = {}
        self.pools: dict[str, WarmPool] = {}
        self.tokens: dict[str, tuple[Worker, WarmPool]] = {}
        self.workers: dict[str, tuple[Worker, WarmPool]] = {}
        self._slots: dict[str, _OnceSlots] = {}
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self.backend.subscribe(self._on_exit)
        # Set by the gateway: starts the reconciler of a new warm pool.
        self.on_pool: list[object] = []

    # -- functions -----------------------------------------------------------------

    async def load(self) -> None:
        """Load the deployed functions from the store."""
        for spec, version in await self.store.list_functions():
            self._install(spec, version)

    def _install(self, spec: FunctionSpec, version: int) -> None:
        self.functions[spec.name] = (spec, version)
        if spec.mode == "warm":
            pool = self.pools.get(spec.name)
            if pool is None:
                self.pools[spec.name] = WarmPool(spec, version)
            else:
                pool.spec, pool.version = spec, version
                pool.wake.set()
        else:
            old = self.pools.pop(spec.name, None)
            if old is not None:
                for w in list(old.workers.values()):
                    old.retire(w)
            self._slots.pop(spec.name, None)

    def get(self, name: str) -> tuple[FunctionSpec, int]:
        """The spec and version of a deployed function; raises FunctionNotFound."""
        try:
            return self.functions[name]
        except KeyError:
            raise FunctionNotFound(name) from None

    async def deploy(self, spec: FunctionSpec) -> int:
        """Deploy or update ``spec``; returns its new version."""
        if not spec.image:
            raise SpecError({"image": "an image is required (build it first: swarmless build)"})
        try:
            await self.backend.ensure_image(spec.image)
        except SwarmlessError as e:
            raise SpecError({"image": e.message}) from e
        if spec.secrets:
            missing = set(spec.secrets) - set(await self.backend.list_secrets())
            if missing:
                raise SpecError(
                    {
                        "secrets": f"no secret named {', '.join(sorted(missing))}; create it "
                        "first: swarmless secret create NAME FILE"
                    }
                )
        version = await self.store.put_function(spec)
        self._install(spec, version)
        return version

    async def remove(self, name: str) -> None:
        """Remove a function: its queue is failed, its workers drained."""
        self.get(name)
        await self.store.delete_function(name)
        self.functions.pop(name, None)
        self._slots.pop(name, None)
        pool = self.pools.pop(name, None)
        if pool is not None:
            for call in list(pool.pending):
                if not call.finished:
                    call.future.set_exception(FunctionNotFound(name))
            pool.pending.clear()
            for w in list(pool.workers.values()):
                pool.retire(w)
                if w.container:
                    self.spawn(self.stop_worker(w, grace=w.busy * 5.0))

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
        self._idle.clear()
        self.metrics.in_progress.inc()
        try:
            if spec.mode == "warm":
                response = await self._invoke_warm(spec, rec, request)
            else:
                response = await self._invoke_once(spec, rec, request)
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
                self.store.record(rec)
            self.metrics.observe(rec, time.monotonic() - t0)
            self.metrics.in_progress.dec()
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    async def _invoke_warm(
        self, spec: FunctionSpec, rec: InvocationRecord, request: Request
    ) -> Response:
        pool = self.pools[spec.name]
        event = {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": [[k, v] for k, v in request.headers],
        }
        loop = asyncio.get_running_loop()
        call = Call(
            record=rec,
            event=json.dumps(event, separators=(",", ":")).encode(),
            body=request.body,
            deadline=time.monotonic() + spec.timeout,
            deadline_ms=now_ms() + int(spec.timeout * 1000),
            future=loop.create_future(),
        )
        if pool.crashed is not None and not pool.counts()["ready"]:
            raise FunctionFailed(pool.crashed)
        pool.submit(call)
        # One timer per call (cheaper than wait_for(shield(...)) on this hot path): at the
        # deadline the call's future gets a TimeoutError, unless it was answered first.
        timer = loop.call_later(spec.timeout, _expire, call.future)
        try:
            result = await call.future
        except TimeoutError:
            worker = pool.forget(call)
            if worker is not None:
                # The worker is stuck in this call: recycle it, its other calls go back.
                pool.gone(worker)
                self.forget_worker(worker)
                self.spawn(self.stop_worker(worker))
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
            timer.cancel()
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
            raise FunctionFailed(f"function {spec.name!r} failed: {result.error}")
        return Response(
            status=result.status, headers=result.headers, body=result.body, call_id=rec.id
        )

    def _slots_of(self, spec: FunctionSpec) -> _OnceSlots:
        slots = self._slots.get(spec.name)
        if slots is None:
            slots = self._slots[spec.name] = _OnceSlots(limit=spec.max_containers)
        slots.limit = spec.max_containers
        return slots

    async def _invoke_once(
        self, spec: FunctionSpec, rec: InvocationRecord, request: Request
    ) -> Response:
        slots = self._slots_of(spec)
        deadline = time.monotonic() + spec.timeout
        t_wait = time.monotonic()
        if slots.running >= slots.limit:
            if slots.waiting >= spec.queue_size:
                raise QueueFull(
                    f"function {spec.name!r} runs {slots.running} containers "
                    f"(max_containers {slots.limit}) and {slots.waiting} calls wait; retry later"
                )
            slots.waiting += 1
            try:
                async with slots.freed:
                    await asyncio.wait_for(
                        slots.freed.wait_for(lambda: slots.running < slots.limit),
                        max(deadline - time.monotonic(), 0.001),
                    )
            except TimeoutError:
                raise InvocationTimeout(
                    f"function {spec.name!r}: no container slot within {spec.timeout:g}s",
                    timeout=spec.timeout,
                ) from None
            finally:
                slots.waiting -= 1
        slots.running += 1
        try:
            rec.wait_ms = round((time.monotonic() - t_wait) * 1000, 3)
            rec.status = "running"
            rec.started_at = now_ms()
            rec.cold = True
            if rec.kind != "async":  # an async record is written durably by its runner
                self.store.record(rec)
            return await self._run_once(spec, rec, request, deadline)
        finally:
            slots.running -= 1
            async with slots.freed:
                slots.freed.notify()

    async def _run_once(
        self, spec: FunctionSpec, rec: InvocationRecord, request: Request, deadline: float
    ) -> Response:
        env = {"SWARMLESS_CALL_ID": rec.id, "SWARMLESS_FUNCTION": spec.name}
        if self.runtime_url:
            env["SWARMLESS_GATEWAY_URL"] = self.runtime_url
        args: list[str] = []
        if spec.mode == "cgi":
            env.update(
                cgi_environ(
                    function=spec.name,
                    method=request.method,
                    path=request.path,
                    query=request.query,
                    headers=request.headers,
                    body_length=len(request.body),
                    remote_addr=request.remote_addr,
                    remote_port=request.remote_port,
                    server_name=request.server_name,
                    server_port=request.server_port,
                    scheme=request.scheme,
                )
            )
        else:
            args = _args_header(request.header("x-swarmless-args"))
        result = await self.backend.run_once(
            spec,
            call_id=rec.id,
            args=args,
            env=env,
            stdin=request.body,
            timeout=max(deadline - time.monotonic(), 0.001),
        )
        rec.container = result.container[:12] or None
        rec.exit_code = result.exit_code
        rec.init_ms = round(result.init_ms, 3)
        rec.run_ms = round(result.run_ms, 3)
        self.store_logs(rec.id, result.stdout, result.stderr)
        if result.timed_out:
            raise InvocationTimeout(
                f"function {spec.name!r} did not finish within {spec.timeout:g}s; "
                "its container was killed",
                timeout=spec.timeout,
            )
        if result.oom:
            limit = f"{spec.memory} bytes" if spec.memory else "its memory limit"
            raise OOMKilled(
                function=spec.name,
                exit_status=result.exit_code,
                stderr=b"OOM-killed: the container exceeded " + limit.encode(),
            )
        if result.exit_code != 0:
            # The same error as Client.run's for a non-zero exit, named for the function.
            raise ContainerError(
                function=spec.name,
                exit_status=result.exit_code,
                stderr=result.stderr[-2000:],
            )
        if spec.mode == "cgi":
            status, headers, body = parse_cgi_response(result.stdout)
            return Response(status=status, headers=headers, body=body, call_id=rec.id)
        return Response(
            status=200,
            headers=[("content-type", "application/octet-stream")],
            body=result.stdout,
            call_id=rec.id,
        )

    def store_logs(self, call_id: str, stdout: bytes, stderr: bytes) -> None:
        if stdout or stderr:
            self.spawn(self.store.put_logs(call_id, stdout[:LOG_LIMIT], stderr[:LOG_LIMIT]))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference and logging its failure."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    # -- workers ---------------------------------------------------------------------

    def new_worker(self, pool: WarmPool) -> Worker:
        worker = Worker(
            id=secrets.token_hex(6),
            token=secrets.token_urlsafe(24),
            function=pool.spec.name,
            version=pool.version,
        )
        pool.add_worker(worker)
        self.tokens[worker.token] = (worker, pool)
        self.workers[worker.id] = (worker, pool)
        return worker

    def forget_worker(self, worker: Worker) -> None:
        self.tokens.pop(worker.token, None)
        self.workers.pop(worker.id, None)

    def worker_for(self, token: str) -> tuple[Worker, WarmPool] | None:
        found = self.tokens.get(token)
        if found is None or found[0].state == "gone":
            return None
        return found

    async def stop_worker(self, worker: Worker, grace: float = 0) -> None:
        if worker.container:
            with contextlib.suppress(SwarmlessError):
                await self.backend.stop_container(worker.container, grace=grace)

    def _on_exit(
        self, container_id: str, worker_id: str | None, exit_code: int, oom: bool = False
    ) -> None:
        """The engine says a container died: forget the worker, requeue its calls.

        A container the kernel killed for its memory limit fails the calls it held (as
        OOM-killed, in their records) instead: running them again would only repeat it.
        """
        if worker_id is None:
            return
        found = self.workers.get(worker_id)
        if found is None:
            return
        worker, pool = found
        before = worker.state
        held = pool.gone(worker, requeue=not oom)
        self.forget_worker(worker)
        if oom:
            limit = f"{pool.spec.memory} bytes" if pool.spec.memory else "its memory limit"
            for call in held:
                if not call.finished:
                    call.future.set_exception(
                        OOMKilled(
                            function=pool.spec.name,
                            exit_status=exit_code,
                            stderr=f"OOM-killed: the container exceeded {limit}".encode(),
                        )
                    )
        elif held:
            log.warning("worker %s died with %d call(s) in hand: requeued", worker.id, len(held))
        if before == "starting" and exit_code not in _KILLED:
            self.spawn(self._crashed(pool, worker, exit_code))
        else:
            self.spawn(self.stop_worker(worker))

    async def _crashed(self, pool: WarmPool, worker: Worker, exit_code: int) -> None:
        """A worker exited before it asked for work: fail what waits, with its output."""
        tail = ""
        if worker.container:
            tail = await self.backend.container_logs(worker.container)
            await self.stop_worker(worker)
        reason = (
            f"function {pool.spec.name!r}: its container exited with status {exit_code} "
            "before it asked for work" + (f": {tail}" if tail else "")
        )
        log.warning("%s", reason)
        pool.crash(reason)

    # -- lifecycle -------------------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Containers and calls per function, for metrics and ``ls``."""
        out: dict[str, dict[str, int]] = {}
        for name in self.functions:
            pool = self.pools.get(name)
            if pool is not None:
                out[name] = pool.counts()
            else:
                slots = self._slots.get(name)
                running = slots.running if slots else 0
                out[name] = {
                    "ready": 0,
                    "starting": 0,
                    "busy": running,
                    "in_flight": running,
                    "queued": slots.waiting if slots else 0,
                }
        return out

    @property
    def closing(self) -> bool:
        """True once the gateway stopped taking calls."""
        return self._closing

    def begin_shutdown(self) -> None:
        """Refuse new calls, fail the queued ones, retire every worker (they drain)."""
        self._closing = True
        for pool in self.pools.values():
            while pool.pending:
                call = pool.pending.popleft()
                if not call.finished:
                    call.future.set_exception(
                        GatewayUnavailable("the gateway is shutting down; retry")
                    )
            for w in list(pool.workers.values()):
                pool.retire(w)

    async def drain(self, timeout: float) -> None:
        """Stop taking calls and wait (up to ``timeout``) for those in flight."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def close(self) -> None:
        """Stop every worker container and flush the store."""
        stops = []
        for pool in self.pools.values():
            for w in list(pool.workers.values()):
                pool.retire(w)
                stops.append(self.stop_worker(w))
            for call in pool.pending:
                if not call.finished:
                    call.future.set_exception(SwarmlessError("the gateway is shutting down"))
        await asyncio.gather(*stops, return_exceptions=True)
        await self.store.flush()


def _expire(future: asyncio.Future[Result]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def _args_header(value: str | None) -> list[str]:
    if not value:
        return []
    try:
        args = json.loads(value)
    except ValueError:
        raise InvalidArgument(
            f"X-Swarmless-Args must be a JSON list of strings: {value!r}"
        ) from None
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise InvalidArgument(f"X-Swarmless-Args must be a JSON list of strings: {value!r}")
    return args


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed: %s", task.exception())
