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
    ├── EngineUnavailable             the Docker Engine (or gateway) does not answer (503)
    ├── GatewayUnavailable            no active gateway replica yet, retry later (503)
    ├── FunctionFailed                the function ran and failed (502)
    │   └── ContainerError            a container exited non-zero
    │       └── OOMKilled             ... because it ran out of memory
    └── InvocationTimeout             the deadline passed; the work was killed (504)
        └── RunTimeout                ... for a container started by ``Client.run``

The HTTP status of each class lives on the class (``status_code``), so the gateway maps
errors to responses in one place and the SDK maps responses back to the same classes.
"""

from __future__ import annotations

from typing import Any, ClassVar

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
    "NotFound",
    "OOMKilled",
    "PayloadTooLarge",
    "QueueFull",
    "RunTimeout",
    "SpecError",
    "SwarmlessError",
    "Unauthorized",
    "error_from_status",
]


class SwarmlessError(Exception):
    """Root of every error swarmless raises on purpose."""

    status_code: ClassVar[int] = 500
    #: A short stable name for the error class, used in JSON error bodies.
    code: ClassVar[str] = "error"

    def __init__(self, message: str, *, invocation: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The id of the invocation this error belongs to, when there is one.
        self.invocation = invocation

    def to_dict(self) -> dict[str, Any]:
        """The JSON body the gateway answers with."""
        body: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.invocation:
            body["call_id"] = self.invocation
        return body


class InvalidArgument(SwarmlessError, ValueError):
    """A bad argument, refused before anything was started."""

    status_code = 400
    code = "invalid_argument"


class SpecError(InvalidArgument):
    """A function spec that does not validate; ``errors`` maps each field to what is wrong."""

    status_code = 422
    code = "invalid_spec"

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = dict(errors)
        detail = "; ".join(f"{field}: {what}" for field, what in self.errors.items())
        super().__init__(f"invalid function spec: {detail}")

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["fields"] = self.errors
        return body


class Unauthorized(SwarmlessError):
    """A request without a valid bearer token for what it asked."""

    status_code = 401
    code = "unauthorized"


class NotFound(SwarmlessError):
    """Something named does not exist."""

    status_code = 404
    code = "not_found"


class FunctionNotFound(NotFound):
    """No function of that name is deployed."""

    code = "function_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"function {name!r} is not deployed")
        self.name = name


class InvocationNotFound(NotFound):
    """No invocation with that id is recorded."""

    code = "invocation_not_found"

    def __init__(self, call_id: str) -> None:
        super().__init__(f"no invocation with id {call_id!r}", invocation=call_id)


class ImageNotFound(NotFound):
    """An image that is not on the engine and could not be pulled."""

    code = "image_not_found"

    def __init__(self, image: str, reason: str = "") -> None:
        why = f": {reason}" if reason else ""
        super().__init__(
            f"image {image!r} is not on the engine and could not be pulled{why}. "
            f"Build it (swarmless build / docker build -t {image} .) or check its name."
        )
        self.image = image


class PayloadTooLarge(SwarmlessError):
    """A request body larger than the function accepts."""

    status_code = 413
    code = "payload_too_large"


class QueueFull(SwarmlessError):
    """The function's queue is full; retry after ``retry_after`` seconds."""

    status_code = 429
    code = "queue_full"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailable(SwarmlessError):
    """The Docker Engine (or the gateway) at ``address`` does not answer."""

    status_code = 503
    code = "engine_unavailable"

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


class GatewayUnavailable(SwarmlessError):
    """No active gateway replica answers (one is starting, or one died and another is
    taking over): retry after ``retry_after`` seconds."""

    status_code = 503
    code = "gateway_unavailable"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FunctionFailed(SwarmlessError):
    """The function ran and reported a failure."""

    status_code = 502
    code = "function_failed"


class ContainerError(FunctionFailed):
    """A container exited with a non-zero status; ``stderr`` holds what it printed."""

    code = "container_error"

    def __init__(
        self,
        *,
        image: str,
        command: list[str] | None,
        exit_status: int,
        stderr: bytes,
        invocation: str | None = None,
        container: str | None = None,
    ) -> None:
        tail = stderr[-2000:].decode("utf-8", "replace").strip()
        cmd = " ".join(command) if command else "(image default command)"
        msg = f"{image} {cmd} exited with status {exit_status}"
        if tail:
            msg += f": {tail}"
        super().__init__(msg, invocation=invocation)
        self.image = image
        self.command = command
        self.exit_status = exit_status
        self.stderr = stderr
        self.container = container

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["exit_status"] = self.exit_status
        return body


class OOMKilled(ContainerError):
    """A container was killed by the kernel for exceeding its memory limit."""

    code = "oom_killed"


class InvocationTimeout(SwarmlessError):
    """The deadline passed before the work finished; the work was stopped."""

    status_code = 504
    code = "timeout"

    def __init__(self, message: str, *, timeout: float, invocation: str | None = None) -> None:
        super().__init__(message, invocation=invocation)
        self.timeout = timeout


class RunTimeout(InvocationTimeout):
    """A container started by ``Client.run`` outlived its timeout and was killed."""

    code = "run_timeout"

    def __init__(self, *, image: str, timeout: float, container: str | None = None) -> None:
        super().__init__(
            f"{image} did not finish within {timeout:g}s; the container was killed",
            timeout=timeout,
        )
        self.image = image
        self.container = container


_BY_STATUS: dict[int, type[SwarmlessError]] = {
    400: InvalidArgument,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    413: PayloadTooLarge,
    422: SpecError,
    429: QueueFull,
    502: FunctionFailed,
    503: EngineUnavailable,
    504: InvocationTimeout,
}


def _subclasses(cls: type[SwarmlessError]) -> list[type[SwarmlessError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


def error_from_status(status: int, body: dict[str, Any]) -> SwarmlessError:
    """Rebuild an error from a gateway answer (the SDK side of ``to_dict``).

    The class is chosen by the body's ``error`` code (falling back on the HTTP status),
    and the context the gateway sent (call id, fields, exit status...) is attached.
    """
    by_code = {c.code: c for c in _subclasses(SwarmlessError)}
    cls = by_code.get(str(body.get("error"))) or _BY_STATUS.get(status, SwarmlessError)
    message = str(body.get("message") or body.get("error") or f"HTTP {status}")
    call_id = body.get("call_id")
    err = cls.__new__(cls)
    SwarmlessError.__init__(err, message, invocation=call_id)
    fields = body.get("fields")
    defaults: dict[str, Any] = {
        "errors": {str(k): str(v) for k, v in fields.items()} if isinstance(fields, dict) else {},
        "retry_after": float(body.get("retry_after", 1.0)),
        "timeout": float(body.get("timeout", 0)),
        "exit_status": body.get("exit_status"),
        "stderr": b"",
        "image": "",
        "command": None,
        "container": None,
        "address": "",
        "name": "",
    }
    for attr, value in defaults.items():
        if not hasattr(err, attr):
            setattr(err, attr, value)
    return err
