"""What the runtime's parts share: one call, its result, and the handler interface.

A :class:`Call` is what ``/runtime/next`` handed out; a :class:`Result` is what goes
back on the next poll (its ``X-Swarmless-*`` headers, :meth:`Result.request_headers`). A
:class:`Handler` turns one into the other; :func:`error_result` turns an exception into a
result, so nothing a function does stops the runtime. The handler kinds live in
:mod:`~swarmless.runtime.handlers` (python), :mod:`~swarmless.runtime.wsgi` and
:mod:`~swarmless.runtime.command`; the pollers in :mod:`~swarmless.runtime.loop`.
"""

from __future__ import annotations

import json
import os
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "CURRENT",
    "Call",
    "Context",
    "FailedHandler",
    "Handler",
    "Result",
    "error_result",
    "header_list",
]

_HERE = os.path.dirname(os.path.abspath(__file__))

#: The call each thread serves right now (``CURRENT.call_id``, set by ``run_handler``): the
#: in-function client (:mod:`~swarmless.runtime.client`) names it as its calls' parent.
CURRENT = threading.local()


class Call:
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
    """Turns a :class:`Call` into a :class:`Result`."""

    #: Whether the loop captures this process's stdout/stderr as the call's logs.
    captures_output = True

    def __call__(self, inv: Call) -> Result:
        raise NotImplementedError


class FailedHandler(Handler):
    """Stands in for a handler that could not be loaded: every call fails with why."""

    captures_output = False

    def __init__(self, message: str, detail: str) -> None:
        self.message = message
        self.detail = detail

    def __call__(self, inv: Call) -> Result:
        detail = self.detail.encode("utf-8", "replace")
        return Result(inv.call_id, detail, status=500, error=self.message)


def header_list(headers: Any) -> list[tuple[str, str]]:
    if not headers:
        return []
    if isinstance(headers, dict):
        return [(str(k), str(v)) for k, v in headers.items()]
    return [(str(k), str(v)) for k, v in headers]
