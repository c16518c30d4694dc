"""What the values of a :class:`~swarmless.spec.FunctionSpec` may be.

The vocabularies (modes, handler kinds, Docker access, the gateway's reserved paths), the
limits, and one check per kind of value: sizes (``"128m"``), command lines, mappings of
names to strings, lists, routes, cron expressions and time zones. A check returns the
value normalised or raises :class:`BadValue` saying what is wrong;
:mod:`swarmless.spec_fields` puts one on each field.
"""

from __future__ import annotations

import datetime
import math
import re
import shlex
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from croniter import CroniterBadDateError, croniter

__all__ = [
    "CONTROL",
    "CONTROL_IN_VALUE",
    "DOCKER_ACCESS",
    "HANDLER_KINDS",
    "MAX_BODY",
    "MAX_MEMORY",
    "MIN_CPUS",
    "MODES",
    "RESERVED_PATHS",
    "BadValue",
    "Check",
    "DockerAccess",
    "HandlerKind",
    "MiB",
    "Mode",
    "NeverFires",
    "arguments",
    "byte_size",
    "inside",
    "integer_in",
    "is_cron",
    "is_integer",
    "is_number",
    "is_zone",
    "next_fire",
    "one_of",
    "optional",
    "route_list",
    "rule",
    "string_list",
    "string_map",
]

Mode = Literal["oneshot", "cgi", "warm"]
HandlerKind = Literal["python", "wsgi", "command", "cgi"]
DockerAccess = Literal["none", "scoped", "host-socket"]
MODES: tuple[str, ...] = ("oneshot", "cgi", "warm")
HANDLER_KINDS: tuple[str, ...] = ("python", "wsgi", "command", "cgi")
#: The gateway's own paths: no function's ``routes`` may claim them or anything below them.
RESERVED_PATHS: tuple[str, ...] = (
    "/system",
    "/function",
    "/async-function",
    "/runtime",
    "/invocations",
    "/ui",
    "/docs",
    "/openapi.json",
    "/healthz",
    "/metrics",
)
DOCKER_ACCESS: tuple[str, ...] = ("none", "scoped", "host-socket")

MiB = 1024**2
#: A route: a path prefix of unreserved URL characters (RFC 3986) or a host name.
_ROUTE_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+/?")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_ROUTE_HOST = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_SIZE = re.compile(r"\s*(\d{1,20}(?:\.\d{1,20})?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": MiB, "g": 1024**3, "t": 1024**4}
#: Control characters: refused in names and values that reach the engine (a NUL cannot be
#: in an environment string at all; the others corrupt logs and headers).
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: ... except that an environment value may hold tabs and line breaks (a PEM key does).
_NUL = re.compile(r"\x00")
CONTROL_IN_VALUE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Largest sizes: memory (static; the gateway also checks the engine's host at deploy) and
#: request bodies (read into memory whole).
MAX_MEMORY = 1024**4  # 1 TiB
MAX_BODY = 1024**3  # 1 GiB
#: Fewest CPUs Docker accepts for a container.
MIN_CPUS = 0.01


class BadValue(Exception):
    """One field's value is wrong; the message says how."""


Check = Callable[[Any], Any]


def inside(v: Any) -> bool:
    """A relative path that stays inside its folder (no '..', not absolute)."""
    if not isinstance(v, str) or not v.strip() or "\0" in v or CONTROL.search(v):
        return False
    path = Path(v)
    return not path.is_absolute() and ".." not in path.parts and not v.startswith("~")


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def rule(ok: Callable[[Any], Any], want: str, convert: Check = lambda v: v) -> Check:
    def check(v: Any) -> Any:
        if not ok(v):
            raise BadValue(f"must be {want}, got {v!r}")
        return convert(v)

    return check


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def integer_in(lo: int, hi: int | None = None) -> Check:
    want = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
    return rule(lambda v: is_integer(v) and lo <= v and (hi is None or v <= hi), want)


def one_of(options: tuple[str, ...]) -> Check:
    return rule(lambda v: isinstance(v, str) and v in options, f"one of {', '.join(options)}")


def byte_size(minimum: int, maximum: int) -> Check:
    def check(v: Any) -> int:
        m = _SIZE.fullmatch(v) if isinstance(v, str) else None
        n = v if is_integer(v) else int(float(m[1]) * _UNITS[m[2].lower()]) if m else None
        if n is None:
            raise BadValue(
                f"must be a number of bytes or a size like '512k', '128m', '1g', got {v!r}"
            )
        if n < minimum:
            raise BadValue(f"must be at least {minimum} bytes ({minimum / MiB:g} MiB), got {v!r}")
        if n > maximum:
            raise BadValue(f"must be at most {maximum} bytes ({_human(maximum)}), got {v!r}")
        return int(n)

    return check


def _human(n: int) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def _scalar(v: Any, what: str, control: re.Pattern[str] = CONTROL) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and control.search(v):
        raise BadValue(f"{what} holds a control character, got {v!r}")
    if isinstance(v, str) or is_number(v):
        return str(v)
    raise BadValue(f"{what} must be a string, number or boolean, got {v!r}")


def arguments(v: Any) -> list[str]:
    args = v
    if isinstance(v, str):
        try:
            args = shlex.split(v)
        except ValueError as e:
            raise BadValue(f"cannot split {v!r} like a shell: {e}") from None
    if not isinstance(args, list | tuple) or not args:
        raise BadValue(f"must be a non-empty list of arguments or a command line, got {v!r}")
    return [_scalar(arg, f"argument {arg!r}", _NUL) for arg in args]


def string_map(reserved: str, key_ok: Callable[[str], bool], control: re.Pattern[str]) -> Check:
    def check(v: Any) -> dict[str, str]:
        if not isinstance(v, Mapping | None):
            raise BadValue(f"must be a mapping of names to strings, got {v!r}")
        for key in v or {}:
            if (
                not isinstance(key, str)
                or not key
                or len(key) > 1024
                or CONTROL.search(key)
                or not key_ok(key)
            ):
                raise BadValue(
                    f"bad name {key!r}: names are non-empty strings without control "
                    f"characters{reserved}"
                )
        return {k: _scalar(val, f"the value of {k!r}", control) for k, val in (v or {}).items()}

    return check


def string_list(item: Callable[[str], Any], want: str) -> Check:
    def check(v: Any) -> tuple[str, ...]:
        items = [] if v is None else [v] if isinstance(v, str) else v
        if not isinstance(items, list | tuple):
            raise BadValue(f"must be a list of {want}, got {v!r}")
        for x in items:
            if not isinstance(x, str) or not item(x):
                raise BadValue(f"must be a list of {want}, got {x!r} in {v!r}")
        if len(set(items)) != len(items):
            raise BadValue(f"must not repeat an item, got {v!r}")
        return tuple(items)

    return check


def is_cron(v: Any) -> bool:
    if not isinstance(v, str) or len(v) > 200 or CONTROL.search(v.replace("\t", " ")):
        return False
    try:
        return bool(croniter.is_valid(v))
    except Exception:  # a parser's surprise is still "not a cron expression"
        return False


def next_fire(cron: str, tz: str, after_ms: int) -> int:
    """The first slot of ``cron`` strictly after ``after_ms`` (epoch ms), in time zone ``tz``.

    :class:`NeverFires` when there is none (``0 0 30 2 *``: there is no 30 February; a
    year field in the past).
    """
    start = datetime.datetime.fromtimestamp(after_ms / 1000, tz=zoneinfo.ZoneInfo(tz))
    try:
        nxt: datetime.datetime = croniter(cron, start).get_next(datetime.datetime)
    except (CroniterBadDateError, ValueError, OverflowError) as e:
        raise NeverFires(f"{cron!r} never fires after {start.isoformat()} ({e})") from None
    return int(nxt.timestamp() * 1000)


class NeverFires(ValueError):
    """A cron expression with no slot left (the dates it names do not exist, or are past)."""


def is_zone(v: Any) -> bool:
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        return False
    return True


def route_list(v: Any) -> tuple[str, ...]:
    """Path prefixes (``/result``, a trailing ``/`` dropped) and host names (lower-cased)."""
    items = [] if v is None else [v] if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or len(items) > 16:
        raise BadValue(f"must be a list of at most 16 path prefixes or host names, got {v!r}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or len(item) > 253:
            raise BadValue(f"must be a list of path prefixes or host names, got {item!r}")
        if item.startswith("/"):
            route = item.rstrip("/") if len(item) > 1 else item
            if not _ROUTE_PATH.fullmatch(item) or any(
                s in (".", "..") for s in route.split("/")[1:]
            ):
                raise BadValue(
                    f"path prefix {item!r}: '/' then segments of letters, digits and "
                    "'.', '_', '~', '-' (no '.' or '..' segment); '/' alone is the gateway's"
                )
            taken = next(
                (r for r in RESERVED_PATHS if route == r or route.startswith(r + "/")), None
            )
            if taken is not None:
                raise BadValue(f"path prefix {item!r} is under the gateway's own {taken!r}")
        else:
            route = item.lower()
            if not _ROUTE_HOST.fullmatch(route):
                raise BadValue(
                    f"{item!r} is neither a path prefix ('/result') nor a host name "
                    "('vote.example.com', no port)"
                )
        if route in out:
            raise BadValue(f"must not repeat a route, got {item!r} twice")
        out.append(route)
    return tuple(out)
