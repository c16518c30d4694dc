"""One-shot execution: ``oneshot`` and ``cgi`` functions, one fresh container per call.

At most ``max_containers`` run at once per function; the next calls wait for a slot (up to
``queue_size`` of them, then 429 at once) within the call's deadline. A ``cgi`` call gets a
CGI/1.1 environment (:mod:`~swarmless.dispatch.cgi`) and answers a CGI response; a
``oneshot`` call gets ``X-Swarmless-Args`` as arguments and answers its stdout. The backend
runs the container to completion or kills it at the deadline, and removes it once the
output and the exit status are in hand, off the answer's path; what it printed becomes the
call's logs (:class:`~swarmless.dispatch.recorder.Recorder`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

from swarmless.backends.base import Backend
from swarmless.dispatch.cgi import cgi_environ, parse_cgi_response
from swarmless.dispatch.recorder import Recorder
from swarmless.dispatch.request import Request, Response
from swarmless.exceptions import (
    ContainerError,
    FunctionFailed,
    InvalidArgument,
    InvocationTimeout,
    OOMKilled,
    QueueFull,
)
from swarmless.records import InvocationRecord, now_ms
from swarmless.spec import FunctionSpec

__all__ = ["OneShotCalls"]


@dataclasses.dataclass(eq=False)
class _Slots:
    """Concurrency slots of a oneshot/cgi function."""

    limit: int
    running: int = 0
    waiting: int = 0
    freed: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)


class OneShotCalls:
    """Runs the calls of ``oneshot`` and ``cgi`` functions, each in a fresh container."""

    def __init__(self, backend: Backend, recorder: Recorder, *, runtime_url: str = "") -> None:
        self._backend = backend
        self._recorder = recorder
        self._runtime_url = runtime_url
        self._slots: dict[str, _Slots] = {}

    def forget(self, function: str) -> None:
        """``function`` was removed or redeployed in another mode."""
        self._slots.pop(function, None)

    def counts(self, function: str) -> dict[str, int]:
        """Containers and calls of ``function``, for metrics and ``ls``."""
        slots = self._slots.get(function)
        running = slots.running if slots else 0
        return {
            "ready": 0,
            "starting": 0,
            "busy": running,
            "in_flight": running,
            "queued": slots.waiting if slots else 0,
        }

    def _slots_of(self, spec: FunctionSpec) -> _Slots:
        slots = self._slots.get(spec.name)
        if slots is None:
            slots = self._slots[spec.name] = _Slots(limit=spec.max_containers)
        slots.limit = spec.max_containers
        return slots

    async def invoke(self, spec: FunctionSpec, rec: InvocationRecord, request: Request) -> Response:
        """Run one call of ``spec`` in a fresh container, once a slot is free."""
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
                self._recorder.record(rec)
            return await self._run(spec, rec, request, deadline)
        finally:
            slots.running -= 1
            async with slots.freed:
                slots.freed.notify()

    async def _run(
        self, spec: FunctionSpec, rec: InvocationRecord, request: Request, deadline: float
    ) -> Response:
        env = {"SWARMLESS_CALL_ID": rec.id, "SWARMLESS_FUNCTION": spec.name}
        if self._runtime_url:
            env["SWARMLESS_GATEWAY_URL"] = self._runtime_url
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
                    prefix=request.prefix,
                )
            )
        else:
            args = args_header(request.header("x-swarmless-args"))
        result = await self._backend.run_once(
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
        self._recorder.logs(rec.id, result.stdout, result.stderr)
        if result.output_exceeded or len(result.stdout) > spec.max_output:
            raise FunctionFailed(
                f"function {spec.name!r} wrote more than {spec.max_output} bytes to stdout, "
                "the limit of its answer (max_output)"
                + ("; its container was stopped" if result.output_exceeded else "")
            )
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


def args_header(value: str | None) -> list[str]:
    """The arguments of a oneshot call, from ``X-Swarmless-Args`` (a JSON list of strings)."""
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
