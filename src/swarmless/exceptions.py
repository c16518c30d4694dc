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
errors to responses in one place and the SDK maps responses back to the same classes.

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

import base64
import binascii
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

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


# -- the wire form of fields -----------------------------------------------------------------


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def _number(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _text_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return list(value)


def _text_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("expected an object of strings")
    return dict(value)


def _bytes_out(value: Any) -> Any:
    """Bytes as text when they are UTF-8 (readable in a JSON body), else ``{"base64": ...}``."""
    data = bytes(value)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def _bytes_in(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except binascii.Error as e:
            raise ValueError(f"invalid base64: {e}") from None
    raise ValueError("expected a string or {'base64': ...}")


def _same(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True)
class _Field:
    """One attribute of an error class and its form in a JSON body."""

    attr: str
    decode: Callable[[Any], Any]
    encode: Callable[[Any], Any] = _same
    #: None is a value of the field (written as an absent key, read back from one).
    optional: bool = False
    #: The key in the JSON body, when it is not the attribute's name.
    key: str = ""

    @property
    def wire(self) -> str:
        return self.key or self.attr


# -- the tree ------------------------------------------------------------------------------


class SwarmlessError(Exception):
    """Root of every error swarmless raises on purpose."""

    status_code: ClassVar[int] = 500
    #: A short stable name for the error class, used in JSON error bodies.
    code: ClassVar[str] = "error"
    #: The fields this class adds to its parent's (see :meth:`fields`).
    _own_fields: ClassVar[tuple[_Field, ...]] = (
        _Field("message", _text),
        _Field("invocation", _text, optional=True, key="call_id"),
    )

    def __init__(self, message: str, *, invocation: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        #: The id of the invocation this error belongs to, when there is one.
        self.invocation = invocation

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The names of the attributes this class carries (its parents' and its own)."""
        return tuple(f.attr for f in cls._fields())

    @classmethod
    def _fields(cls) -> list[_Field]:
        found: list[_Field] = []
        for klass in reversed(cls.__mro__):
            if isinstance(klass, type) and issubclass(klass, SwarmlessError):
                found.extend(klass.__dict__.get("_own_fields", ()))
        return found

    def to_dict(self) -> dict[str, Any]:
        """The JSON body the gateway answers with: ``error`` (the class's code) and
        exactly the fields of this class (bytes as text, or ``{"base64": ...}``)."""
        body: dict[str, Any] = {"error": self.code}
        for f in self._fields():
            value = getattr(self, f.attr)
            if value is None and f.optional:
                continue
            body[f.wire] = f.encode(value)
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any], *, status: int | None = None) -> Self:
        """Rebuild an error from :meth:`to_dict`'s output (what the SDK does with a
        gateway's error answer).

        The class is the one whose ``code`` is ``body["error"]`` (among ``cls`` and its
        subclasses), else the one of the HTTP ``status``, else ``cls``; a body that lacks
        one of that class's fields gives the nearest parent class it has every field of.
        Only the root always succeeds (a missing message becomes ``HTTP <status>``);
        ``SomeSubclass.from_dict`` raises :class:`ValueError` for a body it cannot hold.
        """
        family = _family(cls)
        target = family.get(str(body.get("error")))
        if target is None and status is not None:
            by_status = _BY_STATUS.get(status)
            if by_status is not None and issubclass(by_status, cls):
                target = by_status
        klass: type[SwarmlessError] = target or cls
        if cls is SwarmlessError and not isinstance(body.get("message"), str):
            body = {**body, "message": str(body.get("error") or f"HTTP {status or 500}")}
        problems: list[str] = []
        for candidate in klass.__mro__:
            if not (isinstance(candidate, type) and issubclass(candidate, cls)):
                break
            values: dict[str, Any] = {}
            try:
                for f in candidate._fields():
                    raw = body.get(f.wire)
                    if raw is None:
                        if not f.optional:
                            raise ValueError(f"{f.wire!r} is missing")
                        values[f.attr] = None
                    else:
                        values[f.attr] = f.decode(raw)
            except ValueError as e:
                problems.append(f"{candidate.__name__}: {e}")
                continue
            err = candidate.__new__(candidate)
            Exception.__init__(err, values["message"])
            for attr, value in values.items():
                setattr(err, attr, value)
            return err  # candidate is cls or one of its subclasses
        raise ValueError(f"not a {cls.__name__} body ({'; '.join(problems)}): {dict(body)!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled through the wire form: keyword-only constructors cannot be replayed
        # from ``args``, and the fields are all plain values.
        return (_restore, (type(self), self.to_dict()))

    def __repr__(self) -> str:
        extra = "".join(
            f", {a}={getattr(self, a)!r}"
            for a in self.fields()[2:]
            if getattr(self, a, None) is not None
        )
        call = f", invocation={self.invocation!r}" if self.invocation else ""
        return f"{type(self).__name__}({self.message!r}{call}{extra})"


def _restore(cls: type[SwarmlessError], body: dict[str, Any]) -> SwarmlessError:
    return cls.from_dict(body)


def _family(cls: type[SwarmlessError]) -> dict[str, type[SwarmlessError]]:
    """``cls`` and its subclasses by code (a subclass that forgot its own code does not
    shadow its parent)."""
    found: dict[str, type[SwarmlessError]] = {}
    pending = [cls]
    while pending:
        klass = pending.pop(0)
        found.setdefault(klass.code, klass)
        pending.extend(klass.__subclasses__())
    return found


class InvalidArgument(SwarmlessError, ValueError):
    """A bad argument, refused before anything was started."""

    status_code = 400
    code = "invalid_argument"


class SpecError(InvalidArgument):
    """A function spec that does not validate; ``errors`` maps each field to what is wrong."""

    status_code = 422
    code = "invalid_spec"
    _own_fields: ClassVar[tuple[_Field, ...]] = (_Field("errors", _text_map, key="fields"),)

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = dict(errors)
        detail = "; ".join(f"{field}: {what}" for field, what in self.errors.items())
        super().__init__(f"invalid function spec: {detail}")


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
    _own_fields: ClassVar[tuple[_Field, ...]] = (_Field("name", _text),)

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
    _own_fields: ClassVar[tuple[_Field, ...]] = (_Field("image", _text), _Field("reason", _text))

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


class QueueFull(SwarmlessError):
    """The function's queue is full; retry after ``retry_after`` seconds."""

    status_code = 429
    code = "queue_full"
    _own_fields: ClassVar[tuple[_Field, ...]] = (_Field("retry_after", _number),)

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineUnavailable(SwarmlessError):
    """The Docker Engine at ``address`` does not answer."""

    status_code = 503
    code = "engine_unavailable"
    _own_fields: ClassVar[tuple[_Field, ...]] = (_Field("address", _text), _Field("reason", _text))

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
    _own_fields: ClassVar[tuple[_Field, ...]] = (
        _Field("retry_after", _number),
        _Field("address", _text, optional=True),
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
    _own_fields: ClassVar[tuple[_Field, ...]] = (
        _Field("address", _text),
        _Field("request", _text),
        _Field("reason", _text),
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


class ContainerError(FunctionFailed):
    """A container exited with a non-zero status; ``stderr`` holds what it printed.

    ``Client.run`` raises it with the ``image`` and ``command`` it ran. The gateway raises
    it (and the SDK restores it) for a deployed ``function`` whose container or command
    exited non-zero, with the tail of its ``stderr`` and without ``image`` or ``command``
    (a caller of a public function is not told how it is built).
    """

    code = "container_error"
    _own_fields: ClassVar[tuple[_Field, ...]] = (
        _Field("exit_status", _int),
        _Field("stderr", _bytes_in, _bytes_out),
        _Field("image", _text, optional=True),
        _Field("command", _text_list, optional=True),
        _Field("container", _text, optional=True),
        _Field("function", _text, optional=True),
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
    _own_fields: ClassVar[tuple[_Field, ...]] = (_Field("timeout", _number),)

    def __init__(self, message: str, *, timeout: float, invocation: str | None = None) -> None:
        super().__init__(message, invocation=invocation)
        self.timeout = timeout


class RunTimeout(InvocationTimeout):
    """A container started by ``Client.run`` outlived its timeout and was killed."""

    code = "run_timeout"
    _own_fields: ClassVar[tuple[_Field, ...]] = (
        _Field("image", _text),
        _Field("container", _text, optional=True),
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
    _own_fields: ClassVar[tuple[_Field, ...]] = (_Field("timeout", _number),)

    def __init__(self, message: str, *, timeout: float, invocation: str | None = None) -> None:
        super().__init__(message, invocation=invocation)
        self.timeout = timeout


_BY_STATUS: dict[int, type[SwarmlessError]] = {
    400: InvalidArgument,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    413: PayloadTooLarge,
    422: InvalidArgument,
    429: QueueFull,
    502: FunctionFailed,
    503: GatewayUnavailable,
    504: InvocationTimeout,
}


def error_from_status(status: int, body: Mapping[str, Any]) -> SwarmlessError:
    """Rebuild an error from a gateway answer: ``SwarmlessError.from_dict(body, status=)``."""
    return SwarmlessError.from_dict(body, status=status)
