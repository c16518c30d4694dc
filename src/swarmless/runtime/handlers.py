"""The handler kinds: how one invocation becomes one result.

- ``python``: ``module:callable`` imported once from ``SWARMLESS_WORKDIR``, called as
  ``handle(event, context)``; an ``async def`` handler runs on an event loop kept per thread
  (here);
- ``wsgi``: ``module:app``, a PEP 3333 application; the event becomes a WSGI environ
  (:mod:`~swarmless.runtime.wsgi`);
- ``command``: a shell command line run per invocation (``sh -c``), body on stdin, stdout the
  result, stderr the log; killed (with its process group) at the deadline
  (:mod:`~swarmless.runtime.command`);
- ``cgi``: the same fork per invocation, as a CGI script: a CGI/1.1 environment in, a CGI
  response out (:mod:`~swarmless.runtime.cgi`).

A handler is a callable ``(Call) -> Result`` (:mod:`~swarmless.runtime.invocation`).
It may raise: :func:`run_handler` turns any exception into an error result with
:func:`~swarmless.runtime.invocation.error_result`, and a call's prints into its logs, so
nothing a function does stops the runtime. :func:`load_handler` picks the kind.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from swarmless.runtime import capture
from swarmless.runtime.invocation import (
    CURRENT,
    Call,
    Context,
    FailedHandler,
    Handler,
    Result,
    error_result,
    header_list,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = [
    "KIND_MODULES",
    "Call",
    "Context",
    "FailedHandler",
    "Handler",
    "PythonHandler",
    "Result",
    "error_result",
    "import_kind",
    "load_handler",
    "python_event",
    "run_handler",
]

#: The module of each handler kind not defined here. Only the kind a container runs is
#: imported (:func:`import_kind`): a python handler's runtime does not load the fork and
#: CGI machinery, and every warm start of it is that much cheaper in CPU and memory.
KIND_MODULES = {
    "wsgi": "swarmless.runtime.wsgi",
    "command": "swarmless.runtime.command",
    "cgi": "swarmless.runtime.cgi",
}

_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect


# -- python ---------------------------------------------------------------------------------


def python_event(inv: Call) -> dict[str, Any]:
    """The ``event`` dict of a python handler (see docs/runtime-api.md)."""
    headers: dict[str, str] = {}
    for name, value in inv.header_pairs:
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    parsed: Any = None
    if inv.body:
        try:
            parsed = json.loads(inv.body)
        except ValueError:  # not JSON (UnicodeDecodeError is a ValueError too)
            parsed = None
    return {
        "method": str(inv.event.get("method") or "POST"),
        "path": str(inv.event.get("path") or "/"),
        "query": str(inv.event.get("query") or ""),
        "headers": headers,
        "body": inv.body,
        "json": parsed,
    }


def _body_bytes(body: Any) -> tuple[bytes, str | None]:
    """Encode a returned body; also the content type it implies (None: say nothing)."""
    if body is None:
        return b"", None
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), None
    if isinstance(body, str):
        return body.encode("utf-8"), "text/plain; charset=utf-8"
    return json.dumps(body).encode("utf-8"), "application/json"


def python_result(call_id: str, value: Any) -> Result:
    """Map what a python handler returned to a result (the rules of docs/runtime-api.md)."""
    if isinstance(value, dict) and "statusCode" in value:
        body, implied = _body_bytes(value.get("body"))
        headers = header_list(value.get("headers"))
        if implied and not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("Content-Type", implied))
        return Result(call_id, body, status=int(value["statusCode"]), headers=headers)
    body, implied = _body_bytes(value)
    return Result(call_id, body, headers=[("Content-Type", implied)] if implied else None)


class PythonHandler(Handler):
    """Calls ``handle(event, context)``; awaits it when it is a coroutine."""

    def __init__(self, target: Callable[..., Any], *, function: str) -> None:
        self.target = target
        self.function = function
        self._loops = threading.local()
        code = getattr(target, "__code__", None)
        if code is not None and code.co_flags & _CO_COROUTINE:
            import asyncio  # noqa: F401  paid once at start, not on the first call

    def __call__(self, inv: Call) -> Result:
        ctx = Context(inv.call_id, self.function, inv.deadline)
        value = self.target(python_event(inv), ctx)
        if hasattr(value, "__await__"):
            value = self._await(value, inv.deadline)
        return python_result(inv.call_id, value)

    def _await(self, awaitable: Any, deadline: float | None) -> Any:
        import asyncio

        # One loop per poller thread, reused: asyncio.run() would build one per call.
        loop = getattr(self._loops, "loop", None)
        if loop is None:
            loop = self._loops.loop = asyncio.new_event_loop()
        timeout = None if deadline is None else max(0.0, deadline - time.time())
        return loop.run_until_complete(asyncio.wait_for(awaitable, timeout))


# -- loading and running --------------------------------------------------------------------


def _import_target(spec: str, workdir: str) -> Any:
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"SWARMLESS_HANDLER must be 'module:callable', got {spec!r}")
    if workdir not in sys.path:
        sys.path.insert(0, workdir)
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{spec} is not callable")
    return target


def import_kind(kind: str) -> None:
    """Import the module of handler ``kind`` (nothing for ``python`` or an unknown kind):
    the runtime calls it before :func:`~swarmless.runtime.bytecode.release`, so the module
    is read from the image's cache of the runtime's bytecode like the rest."""
    name = KIND_MODULES.get(kind)
    if name is not None:
        import importlib

        importlib.import_module(name)


def load_handler(kind: str, spec: str, *, workdir: str, function: str, concurrency: int) -> Handler:
    """The handler for ``kind``; a :class:`FailedHandler` when it cannot be loaded.

    A handler that fails to load does not stop the runtime: every invocation then fails
    with the reason, so the caller sees it instead of a container that keeps restarting.
    """
    try:
        if not spec:
            raise ValueError("SWARMLESS_HANDLER is not set")
        if kind == "python":
            return PythonHandler(_import_target(spec, workdir), function=function)
        if kind == "wsgi":
            from swarmless.runtime.wsgi import WsgiHandler

            return WsgiHandler(_import_target(spec, workdir), multithread=concurrency > 1)
        if kind == "command":
            from swarmless.runtime.command import CommandHandler

            return CommandHandler(spec, workdir=workdir)
        if kind == "cgi":
            from swarmless.runtime.cgi import CgiHandler

            return CgiHandler(spec, workdir=workdir)
        raise ValueError(
            f"SWARMLESS_HANDLER_KIND must be python, wsgi, command or cgi, got {kind!r}"
        )
    except BaseException as e:  # an import may raise anything, even SystemExit
        failed = error_result("", e)
        message = f"the handler {spec!r} could not be loaded: {failed.error}"
        return FailedHandler(message, failed.body.decode("utf-8", "replace"))


def run_handler(handler: Handler, inv: Call) -> Result:
    """Run one invocation; any exception becomes an error result, prints become logs."""
    CURRENT.call_id = inv.call_id
    try:
        if not handler.captures_output:
            try:
                return handler(inv)
            except BaseException as e:
                return error_result(inv.call_id, e)
        with capture.capturing() as (out, err):
            try:
                result = handler(inv)
            except BaseException as e:
                result = error_result(inv.call_id, e)
    finally:
        CURRENT.call_id = None
    result.stdout = out.getvalue()
    result.stderr = err.getvalue()
    return result
