"""Every error swarmless raises, under one root.

The tree::

    SwarmlessError                    anything swarmless raises on purpose (500)
    ├── InvalidArgument (ValueError)  a bad argument, refused before anything starts (400)
    │   └── SpecError                 a function spec that does not validate (422)
    ├── Unauthorized                  missing or wrong bearer token (401)
    ├── NotFound                      something named does not exist (404)
    │   ├── FunctionNotFound          no deployed function of that name
    │   ├── InvocationNotFound        no invocation with that id
    │   └── ImageNotFound             an image that is neither local nor pullable
    ├── PayloadTooLarge               a request body over the function's limit (413)
    ├── QueueFull                     the function's queue is full, retry later (429)
    ├── EngineUnavailable             the Docker Engine does not answer (503)
    ├── GatewayUnavailable            no gateway took the request: nothing ran, retry (503)
    ├── NoAnswer                      the request was sent, no answer came: it may have run
    ├── FunctionFailed                the function ran and failed (502)
    │   └── ContainerError            a container (or a function's command) exited non-zero
    │       └── OOMKilled             ... because it ran out of memory
    ├── InvocationTimeout             the deadline passed; the work was killed (504)
    │   └── RunTimeout                ... for a container started by ``Client.run``
    └── WaitTimeout                   the caller stopped waiting; the work goes on

The HTTP status of each class lives on the class (``status_code``), so the gateway maps
errors to responses in one place and the SDK maps responses back to the same classes (an
answer that names no class becomes the class whose ``fallback_for`` lists its status). The
root and the wire form of fields are :mod:`swarmless.error_base`.

Each class carries its own context (``exit_status``, ``stderr``, ``retry_after``...) and
no other: :meth:`SwarmlessError.to_dict` writes exactly those fields and
:meth:`SwarmlessError.from_dict` restores exactly them, so an error that crossed the
gateway is the error that was raised::

    >>> err = QueueFull("queue of 'resize' is full", retry_after=2.5)
    >>> SwarmlessError.from_dict(err.to_dict())
    QueueFull("queue of 'resize' is full", retry_after=2.5)

A body that names a class but lacks one of its fields is restored as the nearest parent
class whose fields it has (a ``container_error`` without ``exit_status`` comes back as a
:class:`FunctionFailed`): fields are never invented.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from swarmless.error_base import (
    Field,
    SwarmlessError,
    bytes_in,
    bytes_out,
    integer,
    number,
    text,
    text_list,
    text_map,
)

# Errors pickled by an older swarmless name this module's restorer.
from swarmless.error_base import _restore as _restore

__all__ = [
    "ContainerError",
    "EngineUnavailable",
    "FunctionFailed",
    "FunctionNotFound",
    "GatewayUnavailable",
    "ImageNotFound",
    "InvalidArgument",
    "InvocationNotFound",
    "InvocationTimeout",
    "NoAnswer",
    "NotFound",
    "OOMKilled",
    "PayloadTooLarge",
    "QueueFull",
    "RunTimeout",
    "SpecError",
    "SwarmlessError",
    "Unauthorized",
    "WaitTimeout",
    "error_from_status",
]


class InvalidArgument(SwarmlessError, ValueError):
    """A bad argument, refused before anything was started."""

    status_code = 400
    code = "invalid_argument"
    fallback_for = (400, 422)


class SpecError(InvalidArgument):
    """A function spec that does not validate; ``errors`` maps each field to what is wrong."""

    status_code = 422
    code = "invalid_spec"
    _own_fields: ClassVar[tuple[Field, ...]] = (Field("errors", text_map, key="fields"),)

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = dict(errors)
        detail = "; ".join(f"{field}: {what}" for field, what in self.errors.items())
        super().__init__(f"invalid function spec: {detail}")


class Unauthorized(SwarmlessError):
    """A request without a valid bearer token for what it asked."""

    status_code = 401
    code = "unauthorized"
    fallback_for = (401, 403)


class NotFound(SwarmlessError):
    """Something named does not exist."""

    status_code = 404
    code = "not_found"
    fallback_for = (404,)


class FunctionNotFound(NotFound):
    """No function of that name is deployed."""

    code = "function_not_found"
    _own_fields: ClassVar[tuple[Field, ...]] = (Field("name", text),)

    def __init__(self, name: str) -> None:
        super().__init__(f"function {name!r} is not deployed")
        self.name = name


class InvocationNotFound(NotFound):
    """No invocation with that id is recorded (the id is ``invocation``)."""

    code = "invocation_not_found"

    def __init__(self, call_id: str) -> None:
        super().__init__(f"no invocation with id {call_id!r}", invocation=call_id)


class ImageNotFound(NotFound):
    """An image that is not on the engine and could not be pulled."""

    code = "image_not_found"
    _own_fields: ClassVar[tuple[Field, ...]] = (Field("image", text), Field("reason", text))

    def __init__(self, image: str, reason: str = "") -> None:
        why = f": {reason}" if reason else ""
        super().__init__(
            f"image {image!r} is not on the engine and could not be pulled{why}. "
            f"Build it (swarmless build / docker build -t {image} .) or check its name."
        )
        self.image = image
        self.reason = reason


class PayloadTooLarge(SwarmlessError):
    """A request body larger than the function accepts."""

    status_code = 413
    code = "payload_too_large"
    fallback_for = (413,)


class QueueFull(SwarmlessError):
    """The function's queue is full; retry after ``retry_after`` seconds."""

    status_code = 429
    code = "queue_full"
    fallback_for = (429,)
    _own_fields: ClassVar[tuple[Field, ...]] = (Field("retry_after", number),)

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailable(SwarmlessError):
    """The Docker Engine at ``address`` does not answer."""

    status_code = 503
    code = "engine_unavailable"
    _own_fields: ClassVar[tuple[Field, ...]] = (Field("address", text), Field("reason", text))

    def __init__(
        self,
        address: str,
        reason: str = "",
        *,
        hint: str | None = None,
        message: str | None = None,
        invocation: str | None = None,
    ) -> None:
        why = f" ({reason})" if reason else ""
        fix = hint or (
            "Start one: `sudo scripts/engine.sh` (installs docker.io and starts dockerd), "
            "or `sudo systemctl start docker`, or point DOCKER_HOST at a running engine."
        )
        super().__init__(
            message or f"no Docker Engine answers at {address}{why}. {fix}", invocation=invocation
        )
        self.address = address
        self.reason = reason


class GatewayUnavailable(SwarmlessError):
    """No gateway took the request, so nothing ran: none answers at ``address`` (the SDK
    could not connect), or no replica is active yet (one is starting, or one died and
    another is taking over), or it is shutting down. Retry after ``retry_after`` seconds."""

    status_code = 503
    code = "gateway_unavailable"
    fallback_for = (503,)
    _own_fields: ClassVar[tuple[Field, ...]] = (
        Field("retry_after", number),
        Field("address", text, optional=True),
    )

    def __init__(
        self, message: str, *, retry_after: float = 1.0, address: str | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        #: The address(es) the SDK could not reach; None when a gateway said it.
        self.address = address


class NoAnswer(SwarmlessError):
    """The request reached the gateway at ``address`` but no answer came back (read
    timeout, connection cut): the call may have run. Look at its record before sending it
    again, or send it with an idempotency key."""

    status_code = 504
    code = "no_answer"
    _own_fields: ClassVar[tuple[Field, ...]] = (
        Field("address", text),
        Field("request", text),
        Field("reason", text),
    )

    def __init__(self, *, address: str, request: str, reason: str) -> None:
        super().__init__(
            f"{request} was sent to the gateway at {address} but no answer came ({reason}); "
            "the call may have run: check its record (swarmless logs FUNCTION) before "
            "sending it again"
        )
        self.address = address
        #: What was sent, e.g. ``POST /function/resize``.
        self.request = request
        self.reason = reason


class FunctionFailed(SwarmlessError):
    """The function ran and reported a failure."""

    status_code = 502
    code = "function_failed"
    fallback_for = (502,)


class ContainerError(FunctionFailed):
    """A container exited with a non-zero status; ``stderr`` holds what it printed.

    ``Client.run`` raises it with the ``image`` and ``command`` it ran. The gateway raises
    it (and the SDK restores it) for a deployed ``function`` whose container or command
    exited non-zero, with the tail of its ``stderr`` and without ``image`` or ``command``
    (a caller of a public function is not told how it is built).
    """

    code = "container_error"
    _own_fields: ClassVar[tuple[Field, ...]] = (
        Field("exit_status", integer),
        Field("stderr", bytes_in, bytes_out),
        Field("image", text, optional=True),
        Field("command", text_list, optional=True),
        Field("container", text, optional=True),
        Field("function", text, optional=True),
    )

    def __init__(
        self,
        *,
        exit_status: int,
        stderr: bytes,
        image: str | None = None,
        command: list[str] | None = None,
        invocation: str | None = None,
        container: str | None = None,
        function: str | None = None,
    ) -> None:
        tail = stderr[-2000:].decode("utf-8", "replace").strip()
        if function is not None:
            msg = f"function {function!r} exited with status {exit_status}"
        else:
            cmd = " ".join(command) if command else "(image default command)"
            msg = f"{image or 'a container'} {cmd} exited with status {exit_status}"
        if tail:
            msg += f": {tail}"
        super().__init__(msg, invocation=invocation)
        self.exit_status = exit_status
        self.stderr = stderr
        self.image = image
        self.command = command
        self.container = container
        #: The deployed function that failed (None for ``Client.run``).
        self.function = function


class OOMKilled(ContainerError):
    """A container was killed by the kernel for exceeding its memory limit."""

    code = "oom_killed"


class InvocationTimeout(SwarmlessError):
    """The deadline passed before the work finished; the work was stopped."""

    status_code = 504
    code = "timeout"
    fallback_for = (504,)
    _own_fields: ClassVar[tuple[Field, ...]] = (Field("timeout", number),)

    def __init__(self, message: str, *, timeout: float, invocation: str | None = None) -> None:
        super().__init__(message, invocation=invocation)
        self.timeout = timeout


class RunTimeout(InvocationTimeout):
    """A container started by ``Client.run`` outlived its timeout and was killed."""

    code = "run_timeout"
    _own_fields: ClassVar[tuple[Field, ...]] = (
        Field("image", text),
        Field("container", text, optional=True),
    )

    def __init__(self, *, image: str, timeout: float, container: str | None = None) -> None:
        super().__init__(
            f"{image} did not finish within {timeout:g}s; the container was killed",
            timeout=timeout,
        )
        self.image = image
        self.container = container


class WaitTimeout(SwarmlessError):
    """The caller waited ``timeout`` seconds for a result and stopped; the work goes on
    (``Invocation.result(timeout=)``, ``Run.wait(timeout=)``: wait again, or kill it)."""

    status_code = 504
    code = "wait_timeout"
    _own_fields: ClassVar[tuple[Field, ...]] = (Field("timeout", number),)

    def __init__(self, message: str, *, timeout: float, invocation: str | None = None) -> None:
        super().__init__(message, invocation=invocation)
        self.timeout = timeout


def error_from_status(status: int, body: Mapping[str, Any]) -> SwarmlessError:
    """Rebuild an error from a gateway answer: ``SwarmlessError.from_dict(body, status=)``."""
    return SwarmlessError.from_dict(body, status=status)
