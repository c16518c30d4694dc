"""The handler kinds: how one invocation becomes one result.

- ``python``: ``module:callable`` imported once from ``SWARMLESS_WORKDIR``, called as
  ``handle(event, context)``; an ``async def`` handler runs on an event loop kept per thread.
- ``wsgi``: ``module:app``, a PEP 3333 application; the event becomes a WSGI environ.
- ``command``: a shell command line run per invocation (``sh -c``), body on stdin, stdout the
  result, stderr the log; killed (with its process group) at the deadline.

A handler is a callable ``(Invocation) -> Result``. It may raise: the caller
(:mod:`swarmless.runtime.loop`) turns any exception into an error result with
:func:`error_result`, so nothing a function does stops the runtime.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = [
    "CommandHandler",
    "Context",
    "FailedHandler",
    "Handler",
    "Invocation",
    "PythonHandler",
    "Result",
    "WsgiHandler",
    "error_result",
    "load_handler",
    "python_event",
    "wsgi_environ",
]

_HERE = os.path.dirname(os.path.abspath(__file__))
_CO_COROUTINE = 0x0080  # inspect.CO_COROUTINE, without importing inspect


class Invocation:
    """One call handed out by ``/runtime/next``: its id, event, body and deadline."""

    __slots__ = ("body", "call_id", "deadline", "event")

    def __init__(
        self, call_id: str, event: dict[str, Any], body: bytes, deadline: float | None
    ) -> None:
        self.call_id = call_id
        #: The wire event: ``method``, ``path``, ``query``, ``headers`` (list of pairs).
        self.event = event
        self.body = body
        #: Epoch seconds after which the gateway has given up, or None.
        self.deadline = deadline

    @property
    def header_pairs(self) -> list[tuple[str, str]]:
        pairs = self.event.get("headers") or []
        return [(str(k), str(v)) for k, v in pairs]


class Result:
    """The result of one invocation, as it travels on the next ``/runtime/next``."""

    __slots__ = ("body", "call_id", "error", "exit_code", "headers", "status", "stderr", "stdout")

    def __init__(
        self,
        call_id: str,
        body: bytes = b"",
        *,
        status: int = 200,
        headers: list[tuple[str, str]] | None = None,
        error: str | None = None,
        exit_code: int | None = None,
    ) -> None:
        self.call_id = call_id
        self.body = body
        self.status = status
        self.headers = headers or []
        #: One-line failure message (``X-Swarmless-Error``); the body then holds the detail.
        self.error = error
        self.exit_code = exit_code
        #: What the invocation printed (sent to ``/runtime/logs/{id}`` when non-empty).
        self.stdout = ""
        self.stderr = ""

    def request_headers(self) -> dict[str, str]:
        """The ``X-Swarmless-*`` headers that carry this result."""
        headers = {
            "X-Swarmless-Result-For": self.call_id,
            "X-Swarmless-Result-Status": str(self.status),
        }
        if self.headers:
            headers["X-Swarmless-Result-Headers"] = json.dumps(
                [[str(k), str(v)] for k, v in self.headers]
            )
        if self.error is not None:
            headers["X-Swarmless-Error"] = _one_line(self.error)
        if self.exit_code is not None:
            headers["X-Swarmless-Exit-Code"] = str(self.exit_code)
        return headers


def _one_line(text: str, limit: int = 500) -> str:
    """A header-safe message: one ASCII line, at most ``limit`` characters."""
    line = " ".join(text.split()) or "error"
    line = line.encode("ascii", "backslashreplace").decode("ascii")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def error_result(call_id: str, exc: BaseException, *, status: int = 500) -> Result:
    """An error result for ``exc``: its message in the header, its traceback in the body."""
    import traceback  # only paid for on the first failure

    tb = exc.__traceback__
    # Frames of the runtime itself say nothing to the function's author: start at theirs.
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_HERE):
        tb = tb.tb_next
    if tb is None:
        tb = exc.__traceback__
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Result(call_id, text.encode("utf-8", "replace"), status=status, error=message)


class Context:
    """The ``context`` argument of a python handler."""

    __slots__ = ("call_id", "deadline", "function")

    def __init__(self, call_id: str, function: str, deadline: float | None) -> None:
        self.call_id = call_id
        self.function = function
        #: Epoch seconds after which the gateway has given up, or None.
        self.deadline = deadline

    def remaining(self) -> float:
        """Seconds left before the deadline (``inf`` without one, never negative)."""
        if self.deadline is None:
            return float("inf")
        return max(0.0, self.deadline - time.time())

    def __repr__(self) -> str:
        return f"Context(call_id={self.call_id!r}, function={self.function!r})"


class Handler:
    """Turns an :class:`Invocation` into a :class:`Result`."""

    #: Whether the loop captures this process's stdout/stderr as the call's logs.
    captures_output = True

    def __call__(self, inv: Invocation) -> Result:
        raise NotImplementedError


class FailedHandler(Handler):
    """Stands in for a handler that could not be loaded: every call fails with why."""

    captures_output = False

    def __init__(self, message: str, detail: str) -> None:
        self.message = message
        self.detail = detail

    def __call__(self, inv: Invocation) -> Result:
        detail = self.detail.encode("utf-8", "replace")
        return Result(inv.call_id, detail, status=500, error=self.message)


# -- python ---------------------------------------------------------------------------------


def python_event(inv: Invocation) -> dict[str, Any]:
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


def _header_list(headers: Any) -> list[tuple[str, str]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]


def python_result(call_id: str, value: Any) -> Result:
    """Map what a python handler returned to a result (the rules of docs/runtime-api.md)."""
    if isinstance(value, dict) and "statusCode" in value:
        body, implied = _body_bytes(value.get("body"))
        headers = _header_list(value.get("headers"))
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

    def __call__(self, inv: Invocation) -> Result:
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


# -- wsgi -----------------------------------------------------------------------------------


def _latin1(text: str) -> str:
    """A PEP 3333 native string: the UTF-8 bytes of ``text`` seen as latin-1."""
    return text.encode("utf-8").decode("latin-1")


def wsgi_environ(inv: Invocation, *, multithread: bool) -> dict[str, Any]:
    """A PEP 3333 environ for one invocation.

    The headers are those the gateway's edge let through: its ``X-Forwarded-For`` (the
    client it vouches for first), ``-Proto`` and ``-Host`` replaced whatever a client sent,
    so ``REMOTE_ADDR``, ``wsgi.url_scheme`` and ``SERVER_NAME`` can be taken from them. A
    name with ``_`` (refused by the edge) is skipped rather than merged into the same name
    with ``-``, and no header becomes ``HTTP_PROXY``.
    """
    import io

    event = inv.event
    environ: dict[str, Any] = {
        "REQUEST_METHOD": str(event.get("method") or "GET").upper(),
        "SCRIPT_NAME": "",
        "PATH_INFO": _latin1(str(event.get("path") or "/")),
        "QUERY_STRING": str(event.get("query") or ""),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(inv.body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(inv.body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "swarmless.call_id": inv.call_id,
        "swarmless.deadline": inv.deadline,
    }
    for name, value in inv.header_pairs:
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        if key == "PROXY":
            continue  # httpoxy: HTTP_PROXY is the proxy of the application's HTTP clients
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        if key == "CONTENT_LENGTH":
            continue  # the body we hold is the truth
        key = "HTTP_" + key
        if key in environ:
            sep = "; " if key == "HTTP_COOKIE" else ", "
            environ[key] = environ[key] + sep + _latin1(value)
        else:
            environ[key] = _latin1(value)
    proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[0].strip().lower()
    if proto in ("http", "https"):
        environ["wsgi.url_scheme"] = proto
    prefix = environ.get("HTTP_X_FORWARDED_PREFIX", "").rstrip("/")
    if prefix:
        environ["SCRIPT_NAME"] = prefix
    host = environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()
    host = host or environ.get("HTTP_HOST", "")
    name, sep, port = host.rpartition(":")
    if not sep or not port.isdigit() or name.endswith(":"):  # no port, or a bare IPv6
        name, port = host, ""
    environ["SERVER_NAME"] = name or "localhost"
    environ["SERVER_PORT"] = port or ("443" if environ["wsgi.url_scheme"] == "https" else "80")
    forwarded = environ.get("HTTP_X_FORWARDED_FOR", "").split(",")[0].strip()
    if forwarded:
        environ["REMOTE_ADDR"] = forwarded
    return environ


class WsgiHandler(Handler):
    """Runs a WSGI application for each invocation and collects its response."""

    def __init__(self, app: Callable[..., Iterable[bytes]], *, multithread: bool) -> None:
        self.app = app
        self.multithread = multithread

    def __call__(self, inv: Invocation) -> Result:
        environ = wsgi_environ(inv, multithread=self.multithread)
        response: list[Any] = []
        chunks: list[bytes] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            # Nothing is sent before the application returns, so a late start_response
            # (with exc_info, after an error) may always replace the first one.
            if response and exc_info is None:
                raise AssertionError("start_response called twice without exc_info")
            response[:] = [status, list(headers)]
            return chunks.append

        iterable = self.app(environ, start_response)
        try:
            for chunk in iterable:
                if chunk:
                    chunks.append(bytes(chunk))
        finally:
            close = getattr(iterable, "close", None)
            if close is not None:
                close()
        if not response:
            raise RuntimeError("the WSGI application returned without calling start_response")
        status_line, headers = response
        code = int(str(status_line).split(None, 1)[0])
        return Result(inv.call_id, b"".join(chunks), status=code, headers=_header_list(headers))


# -- command --------------------------------------------------------------------------------


class CommandHandler(Handler):
    """Runs ``sh -c COMMAND`` per invocation; body on stdin, stdout back, stderr logged."""

    captures_output = False  # the child's stderr is the log, not this process's prints

    def __init__(self, command: str, *, workdir: str) -> None:
        import subprocess  # only command handlers pay for it

        self._subprocess = subprocess
        self.command = command
        self.workdir = workdir if os.path.isdir(workdir) else None

    def environ(self, inv: Invocation) -> dict[str, str]:
        env = dict(os.environ)
        event = inv.event
        env["SWARMLESS_CALL_ID"] = inv.call_id
        if inv.deadline is not None:
            env["SWARMLESS_DEADLINE"] = str(int(inv.deadline * 1000))
        env["REQUEST_METHOD"] = str(event.get("method") or "POST").upper()
        env["PATH_INFO"] = str(event.get("path") or "/")
        env["QUERY_STRING"] = str(event.get("query") or "")
        env["CONTENT_LENGTH"] = str(len(inv.body))
        for name, value in inv.header_pairs:
            if name.lower() == "content-type":
                env["CONTENT_TYPE"] = value
        return env

    def __call__(self, inv: Invocation) -> Result:
        sp = self._subprocess
        proc = sp.Popen(
            ["/bin/sh", "-c", self.command],
            stdin=sp.PIPE,
            stdout=sp.PIPE,
            stderr=sp.PIPE,
            cwd=self.workdir,
            env=self.environ(inv),
            start_new_session=True,  # its own process group: the deadline kills all of it
        )
        timeout = None if inv.deadline is None else max(0.0, inv.deadline - time.time())
        started = time.monotonic()
        killed = False
        try:
            out, err = proc.communicate(inv.body, timeout=timeout)
        except sp.TimeoutExpired:
            killed = True
            self._kill_group(proc.pid)
            try:
                out, err = proc.communicate(timeout=5)
            except sp.TimeoutExpired:  # something outside the group still holds the pipes
                proc.kill()
                out, err = b"", b""
        except BaseException:
            self._kill_group(proc.pid)
            proc.wait()
            raise
        code = proc.returncode
        exit_code = 128 - code if code < 0 else code  # killed by signal N: 128+N, as sh says
        if killed:
            elapsed = time.monotonic() - started
            result = Result(
                inv.call_id,
                err,
                status=504,
                error=f"deadline passed: the command was killed after {elapsed:.1f}s",
                exit_code=exit_code,
            )
        elif exit_code != 0:
            result = Result(
                inv.call_id,
                err,
                status=500,
                error=f"the command exited with status {exit_code}",
                exit_code=exit_code,
            )
        else:
            result = Result(inv.call_id, out, exit_code=0)
        result.stderr = err.decode("utf-8", "replace")
        return result

    @staticmethod
    def _kill_group(pid: int) -> None:
        import contextlib
        import signal

        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


# -- loading --------------------------------------------------------------------------------


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
            return WsgiHandler(_import_target(spec, workdir), multithread=concurrency > 1)
        if kind == "command":
            return CommandHandler(spec, workdir=workdir)
        raise ValueError(f"SWARMLESS_HANDLER_KIND must be python, wsgi or command, got {kind!r}")
    except BaseException as e:  # an import may raise anything, even SystemExit
        failed = error_result("", e)
        message = f"the handler {spec!r} could not be loaded: {failed.error}"
        return FailedHandler(message, failed.body.decode("utf-8", "replace"))
