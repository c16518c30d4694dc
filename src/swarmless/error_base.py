"""The root of every swarmless error, and the wire form that lets an error round-trip.

Each class of the tree (:mod:`swarmless.exceptions`) lists the fields it adds to its
parent's (``_own_fields``, each a :class:`Field`: its attribute, its JSON key, how it is
read and written). :meth:`SwarmlessError.to_dict` writes exactly a class's fields and
:meth:`SwarmlessError.from_dict` restores exactly them: the class named by the body's
``error`` code, else the class that stands for the HTTP status (``fallback_for``), else the
one asked; a body that lacks a field comes back as the nearest parent class whose fields it
has. Fields are never invented.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self

__all__ = [
    "Field",
    "SwarmlessError",
    "bytes_in",
    "bytes_out",
    "integer",
    "number",
    "text",
    "text_list",
    "text_map",
]

# -- the wire form of fields -----------------------------------------------------------------


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def integer(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def number(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    return float(value)


def text_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return list(value)


def text_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError("expected an object of strings")
    return dict(value)


def bytes_out(value: Any) -> Any:
    """Bytes as text when they are UTF-8 (readable in a JSON body), else ``{"base64": ...}``."""
    data = bytes(value)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode("ascii")}


def bytes_in(value: Any) -> bytes:
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
class Field:
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
    #: The HTTP statuses whose answers become this class when they name no class of their
    #: own (read from each class itself, not inherited): an old gateway's, a proxy's.
    fallback_for: ClassVar[tuple[int, ...]] = ()
    #: The fields this class adds to its parent's (see :meth:`fields`).
    _own_fields: ClassVar[tuple[Field, ...]] = (
        Field("message", text),
        Field("invocation", text, optional=True, key="call_id"),
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
    def _fields(cls) -> list[Field]:
        found: list[Field] = []
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
            by_status = _by_status(status)
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


def _by_status(status: int) -> type[SwarmlessError] | None:
    """The class that stands for an HTTP ``status`` (the one whose own ``fallback_for``
    lists it, nearest the root first)."""
    pending: list[type[SwarmlessError]] = [SwarmlessError]
    while pending:
        klass = pending.pop(0)
        if status in klass.__dict__.get("fallback_for", ()):
            return klass
        pending.extend(klass.__subclasses__())
    return None
