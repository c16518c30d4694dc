"""FunctionSpec: what a deployed function is, validated once, at the edge.

A ``swarmless.yml`` declares functions under ``functions:``, either as a mapping from name
to spec (as here) or as a list of specs that each carry a ``name``::

    settings:                    # read by swarmless.config, ignored here
      gateway_url: http://127.0.0.1:8080
    functions:
      vote:
        build: ./vote            # a build context beside this file, tagged swarmless-fn/vote:latest
        mode: warm
        handler: app:handle      # module:callable, served by the swarmless runtime
        concurrency: 4
        max_containers: 5
        memory: 128m
        env: {REDIS_HOST: redis, DEBUG: true}   # values become strings: "true"
      result:
        image: swarmless/python:bookworm
        mode: cgi
        command: python /app/result.py          # a string is split like a shell would
        private: true
      nightly-report:
        image: example/report:1.2
        schedule: "0 3 * * *"
        timezone: Europe/Paris
        retries: 5
        timeout: 600

Every field is checked and every problem reported at once, as one
:class:`~swarmless.exceptions.SpecError` mapping each field to what is wrong with it (in a
file, the field is prefixed with the function's name: ``vote.timeout``).

>>> spec = FunctionSpec.from_dict({"name": "hello", "image": "busybox", "command": "echo hi"})
>>> spec.command, spec.timeout
(['echo', 'hi'], 30.0)
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import functools
import hashlib
import json
import math
import os
import re
import shlex
import zoneinfo
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from croniter import CroniterBadDateError, croniter

from swarmless.exceptions import InvalidArgument, SpecError

__all__ = [
    "DOCKER_ACCESS",
    "HANDLER_KINDS",
    "MODES",
    "RESERVED_PATHS",
    "DockerAccess",
    "FunctionSpec",
    "HandlerKind",
    "Mode",
    "NeverFires",
    "load_file",
    "next_fire",
    "read_env_files",
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
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_SECRET = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: A route: a path prefix of unreserved URL characters (RFC 3986) or a host name.
_ROUTE_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+/?")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_ROUTE_HOST = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_SIZE = re.compile(r"\s*(\d{1,20}(?:\.\d{1,20})?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": MiB, "g": 1024**3, "t": 1024**4}
#: An image reference, after the grammar of Docker's distribution/reference:
#: ``[domain[:port]/]path[/path...][:tag][@algorithm:hex]``, path components lower-case.
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]{{1,5}})?"
_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:{_DOMAIN}/)?{_PATH}(?:/{_PATH})*"
    r"(?::[\w][\w.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
)
#: An image's id on an engine (its configuration's digest).
_IMAGE_ID = re.compile(r"[a-z0-9]{1,16}:[0-9a-f]{32,128}")
#: A name in a .env file.
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
#: A Docker network name (what the engine accepts).
_NETWORK = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
#: Control characters: refused in names and values that reach the engine (a NUL cannot be
#: in an environment string at all; the others corrupt logs and headers).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: ... except that an environment value may hold tabs and line breaks (a PEM key does).
_NUL = re.compile(r"\x00")
_CONTROL_IN_VALUE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
#: Largest sizes: memory (static; the gateway also checks the engine's host at deploy) and
#: request bodies (read into memory whole).
MAX_MEMORY = 1024**4  # 1 TiB
MAX_BODY = 1024**3  # 1 GiB
#: Fewest CPUs Docker accepts for a container.
MIN_CPUS = 0.01


@dataclasses.dataclass(frozen=True, kw_only=True)
class FunctionSpec:
    """A function: which image runs, how, with what limits and which async policy.

    The constructor validates (and normalises: sizes to bytes, a command string to a list,
    ``build`` to an absolute path); :meth:`from_dict` is the loose entry point for YAML and
    JSON. A spec is immutable: change one with :meth:`replace`.

    >>> FunctionSpec(name="echo", image="busybox", memory="64m").memory
    67108864
    """

    name: str
    image: str | None = None
    #: What the image holds: the engine's id of ``image``, set by the gateway at deploy (a
    #: deploy whose image changed is a new version, rolled out); given, it is checked.
    image_id: str | None = None
    #: A build context directory; its image is tagged ``image`` (default swarmless-fn/NAME).
    build: str | None = None
    #: The Dockerfile to build with, a path inside ``build`` (default: ``build``/Dockerfile
    #: when there is one, else a Dockerfile generated for the mode and base image).
    dockerfile: str | None = None
    mode: Mode = "oneshot"
    command: list[str] | None = None
    #: Warm mode: ``module:callable`` (python, wsgi) or a command line (command, cgi: forked
    #: per call, the request as CGI/1.1 in, a CGI response out).
    handler: str | None = None
    handler_kind: HandlerKind = "python"
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    #: ``.env`` files (``KEY=VALUE`` lines) beside the swarmless.yml, read when the file is
    #: loaded (:func:`load_file`) into ``env`` (whose own entries win).
    env_file: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    #: Seconds; enforced by the dispatcher, the one owner of a call's deadline.
    timeout: float = 30.0
    #: Bytes (``"128m"``, ``"1g"``, ``"512k"`` are accepted); at least 6 MiB.
    memory: int | None = None
    cpus: float | None = None
    #: Calls one container serves at once.
    concurrency: int = 1
    min_containers: int = 0
    max_containers: int = 10
    #: Seconds a container may sit idle before it is removed (scale to zero).
    idle_timeout: float = 300.0
    #: Ready containers kept beyond demand (paused ones with ``paused_buffer``).
    buffer: int = 0
    paused_buffer: bool = False
    #: Calls that may wait for a container; one more is answered 429 at once.
    queue_size: int = 1000
    #: Request body limit in bytes (sizes like ``"1m"`` accepted).
    max_body: int = 10 * MiB
    #: Answer limit in bytes: a oneshot/cgi call's stdout, a warm worker's result. More is
    #: refused (502 naming this limit; a one-shot container is killed at once).
    max_output: int = 10 * MiB
    #: Processes and threads one container may hold (a fork bomb stops there); None: the
    #: gateway's ``function_pids`` setting.
    pids: int | None = None
    #: Bytes of output the engine keeps in a container's log; None: the gateway's
    #: ``function_log_size`` setting.
    log_size: int | None = None
    #: A private function needs the gateway token; a public one does not.
    private: bool = False
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    network: str | None = None
    #: Async policy: attempts after the first, backoff base (s), give up after max_age (s).
    retries: int = 2
    backoff: float = 1.0
    max_age: float = 86400.0
    async_concurrency: int | None = None
    #: Idempotent: a sync call whose container died while it ran is run again (twice at
    #: most). Without it the caller gets a 502 with the container's exit reason.
    retry_sync: bool = False
    #: A cron expression (``"*/5 * * * *"``), evaluated in ``timezone``.
    schedule: str | None = None
    timezone: str = "UTC"
    #: Docker access from inside the function's containers.
    docker: DockerAccess = "none"
    #: Seconds the child containers a call started (``docker: scoped``) may go on running
    #: after the container that started them exited; then they are killed. 0: they die
    #: with it.
    children_timeout: float = 60.0
    #: Where the function is served besides ``/function/NAME/``: path prefixes
    #: (``/result``: ``/result/votes`` reaches it with ``SCRIPT_NAME=/result``) and host
    #: names (``vote.example.com``: that host's every path but the gateway's own).
    routes: tuple[str, ...] = ()
    #: Swarm placement constraints, e.g. ``"node.role == worker"``.
    placement: tuple[str, ...] = ()
    #: Swarm placement preferences: spread containers evenly over the values of these node
    #: labels, in order, e.g. ``"node.labels.zone"``.
    spread: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        raw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values, errors = _validate(raw)
        if errors:
            raise SpecError(errors)
        for field, value in values.items():
            object.__setattr__(self, field, value)

    def __hash__(self) -> int:
        return hash(self.digest)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base_dir: Path | None = None) -> FunctionSpec:
        """Validate a spec from YAML or JSON; a relative ``build`` is resolved against
        ``base_dir`` (the folder of the swarmless.yml), else against the working directory."""
        if not isinstance(data, Mapping):
            raise SpecError({"spec": f"must be a mapping of fields, got {data!r}"})
        known = [f.name for f in dataclasses.fields(cls)]
        errors: dict[str, str] = {}
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                errors[str(key)] = "unknown field" + (
                    f" (did you mean {close[0]!r}?)" if close else ""
                )
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs.setdefault("name", None)
        build = kwargs.get("build")
        if base_dir is not None and isinstance(build, str) and build.strip():
            kwargs["build"] = str(Path(base_dir) / Path(build).expanduser())
        # Only a file on this machine reads files (the gateway takes env as sent).
        files = kwargs.get("env_file")
        if base_dir is not None and files:
            try:
                from_files = read_env_files(files, Path(base_dir))
            except SpecError as e:
                errors.update(e.errors)
            else:
                env = kwargs.get("env") or {}
                kwargs["env"] = {**from_files, **env} if isinstance(env, Mapping) else env
        try:
            spec = cls(**kwargs)
        except SpecError as e:
            errors = {**e.errors, **errors}
        else:
            if not errors:
                return spec
        raise SpecError(errors)

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-serialisable; ``from_dict(spec.to_dict()) == spec``."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    def replace(self, **changes: Any) -> FunctionSpec:
        """A copy with ``changes`` applied, validated like a new spec."""
        data = self.to_dict()
        if "name" in changes and self.build and self.image == f"swarmless-fn/{self.name}:latest":
            data["image"] = None  # named after the function: follows a new name
        return type(self).from_dict({**data, **changes})

    @functools.cached_property
    def digest(self) -> str:
        """A short stable hash of the spec, to tell whether a deployed function changed.

        Fields at their default value are left out, so adding a field with a default to a
        later swarmless does not make every deployed function look changed.
        """
        defaults = _defaults()
        body = {k: v for k, v in self.to_dict().items() if k not in defaults or defaults[k] != v}
        blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_file(path: str | os.PathLike[str]) -> list[FunctionSpec]:
    """The functions declared in a swarmless.yml, in file order.

    ``functions:`` is a mapping name -> spec (the name is injected) or a list of specs. A
    ``settings:`` section is ignored here (``swarmless.config`` reads it). Every problem in
    the file is raised at once as one SpecError with fields like ``vote.timeout``.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise InvalidArgument(f"cannot read {p}: {e.strerror or e}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError({"file": f"{p} is not valid YAML{where}: {what}"}) from None
    if doc is None:
        return []
    if not isinstance(doc, Mapping):
        raise SpecError({"file": f"{p} must hold a mapping with 'functions:', got {doc!r}"})
    return _load_functions(doc.get("functions"), p.parent.absolute())


def _load_functions(section: Any, base_dir: Path) -> list[FunctionSpec]:
    errors: dict[str, str] = {}
    entries: list[tuple[str, Mapping[str, Any]]] = []
    if section is None:
        return []
    if isinstance(section, Mapping):
        for key, body in section.items():
            body = {} if body is None else body
            if not isinstance(body, Mapping):
                errors[str(key)] = f"must be a mapping of fields, got {body!r}"
            elif "name" in body and body["name"] != key:
                errors[f"{key}.name"] = f"differs from its key {key!r}, got {body['name']!r}"
            else:
                entries.append((str(key), {**body, "name": key}))
    elif isinstance(section, list):
        for i, body in enumerate(section):
            name = body.get("name") if isinstance(body, Mapping) else None
            prefix = name if isinstance(name, str) and name else f"functions[{i}]"
            if isinstance(body, Mapping):
                entries.append((prefix, body))
            else:
                errors[prefix] = f"must be a mapping of fields, got {body!r}"
    else:
        errors["functions"] = f"must be a mapping of name to spec or a list, got {section!r}"
    specs: list[FunctionSpec] = []
    for prefix, body in entries:
        try:
            spec = FunctionSpec.from_dict(body, base_dir=base_dir)
        except SpecError as e:
            errors.update({f"{prefix}.{field}": what for field, what in e.errors.items()})
            continue
        if any(s.name == spec.name for s in specs):
            errors[f"{prefix}.name"] = f"duplicate function name {spec.name!r}"
        specs.append(spec)
    if errors:
        raise SpecError(errors)
    return specs


# -- .env files --------------------------------------------------------------------------


def read_env_files(files: Any, base_dir: Path) -> dict[str, str]:
    """The variables of ``env_file`` (one path or a list, relative to ``base_dir``), later
    files winning. Lines are ``KEY=VALUE`` (an ``export`` before is allowed), ``#`` starts a
    comment line, a value may be quoted: ``'as is'`` or ``"with \\n escapes"``; an unquoted
    value ends at `` #``. Nothing is expanded. A SpecError names the file and line."""
    names = [files] if isinstance(files, str) else files
    if not isinstance(names, list | tuple) or not all(
        isinstance(n, str) and _inside(n) for n in names
    ):
        raise SpecError(
            {"env_file": f"must be relative paths of .env files, like '.env', got {files!r}"}
        )
    out: dict[str, str] = {}
    for name in names:
        path = base_dir / name
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise SpecError({"env_file": f"cannot read {path}: {why}"}) from None
        for number, line in enumerate(text.splitlines(), 1):
            try:
                parsed = _env_line(line)
            except _Bad as e:
                raise SpecError({"env_file": f"{path}, line {number}: {e}"}) from None
            if parsed is not None:
                out[parsed[0]] = parsed[1]
    return out


def _env_line(line: str) -> tuple[str, str] | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("export "):
        text = text[7:].lstrip()
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not _ENV_KEY.fullmatch(key):
        raise _Bad(f"expected KEY=VALUE (a name of letters, digits and '_'), got {line!r}")
    value = value.strip()
    if value[:1] in ("'", '"'):
        quote = value[0]
        end = 1
        chars: list[str] = []
        while end < len(value) and value[end] != quote:
            c = value[end]
            if quote == '"' and c == "\\" and end + 1 < len(value):
                end += 1
                c = {"n": "\n", "t": "\t", "r": "\r"}.get(value[end], value[end])
            chars.append(c)
            end += 1
        rest = value[end + 1 :].strip()
        if end >= len(value) or (rest and not rest.startswith("#")):
            raise _Bad(f"the value of {key} has no closing {quote} (one line per value)")
        return key, "".join(chars)
    comment = re.search(r"\s#", value)
    return key, (value[: comment.start()] if comment else value).strip()


def _inside(v: Any) -> bool:
    """A relative path that stays inside its folder (no '..', not absolute)."""
    if not isinstance(v, str) or not v.strip() or "\0" in v or _CONTROL.search(v):
        return False
    path = Path(v)
    return not path.is_absolute() and ".." not in path.parts and not v.startswith("~")


# -- validation ------------------------------------------------------------------------


class _Bad(Exception):
    """One field's value is wrong; the message says how."""


_Check = Callable[[Any], Any]


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rule(ok: Callable[[Any], Any], want: str, convert: _Check = lambda v: v) -> _Check:
    def check(v: Any) -> Any:
        if not ok(v):
            raise _Bad(f"must be {want}, got {v!r}")
        return convert(v)

    return check


def _optional(check: _Check) -> _Check:
    return lambda v: None if v is None else check(v)


def _integer(lo: int, hi: int | None = None) -> _Check:
    want = f"an integer from {lo} to {hi}" if hi is not None else f"an integer >= {lo}"
    return _rule(lambda v: _int(v) and lo <= v and (hi is None or v <= hi), want)


def _choice(options: tuple[str, ...]) -> _Check:
    return _rule(lambda v: isinstance(v, str) and v in options, f"one of {', '.join(options)}")


def _size(minimum: int, maximum: int) -> _Check:
    def check(v: Any) -> int:
        m = _SIZE.fullmatch(v) if isinstance(v, str) else None
        n = v if _int(v) else int(float(m[1]) * _UNITS[m[2].lower()]) if m else None
        if n is None:
            raise _Bad(f"must be a number of bytes or a size like '512k', '128m', '1g', got {v!r}")
        if n < minimum:
            raise _Bad(f"must be at least {minimum} bytes ({minimum / MiB:g} MiB), got {v!r}")
        if n > maximum:
            raise _Bad(f"must be at most {maximum} bytes ({_human(maximum)}), got {v!r}")
        return int(n)

    return check


def _human(n: int) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def _scalar(v: Any, what: str, control: re.Pattern[str] = _CONTROL) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str) and control.search(v):
        raise _Bad(f"{what} holds a control character, got {v!r}")
    if isinstance(v, str) or _num(v):
        return str(v)
    raise _Bad(f"{what} must be a string, number or boolean, got {v!r}")


def _command(v: Any) -> list[str]:
    args = v
    if isinstance(v, str):
        try:
            args = shlex.split(v)
        except ValueError as e:
            raise _Bad(f"cannot split {v!r} like a shell: {e}") from None
    if not isinstance(args, list | tuple) or not args:
        raise _Bad(f"must be a non-empty list of arguments or a command line, got {v!r}")
    return [_scalar(arg, f"argument {arg!r}", _NUL) for arg in args]


def _mapping(reserved: str, key_ok: Callable[[str], bool], control: re.Pattern[str]) -> _Check:
    def check(v: Any) -> dict[str, str]:
        if not isinstance(v, Mapping | None):
            raise _Bad(f"must be a mapping of names to strings, got {v!r}")
        for key in v or {}:
            if (
                not isinstance(key, str)
                or not key
                or len(key) > 1024
                or _CONTROL.search(key)
                or not key_ok(key)
            ):
                raise _Bad(
                    f"bad name {key!r}: names are non-empty strings without control "
                    f"characters{reserved}"
                )
        return {k: _scalar(val, f"the value of {k!r}", control) for k, val in (v or {}).items()}

    return check


def _strings(item: Callable[[str], Any], want: str) -> _Check:
    def check(v: Any) -> tuple[str, ...]:
        items = [] if v is None else [v] if isinstance(v, str) else v
        if not isinstance(items, list | tuple):
            raise _Bad(f"must be a list of {want}, got {v!r}")
        for x in items:
            if not isinstance(x, str) or not item(x):
                raise _Bad(f"must be a list of {want}, got {x!r} in {v!r}")
        if len(set(items)) != len(items):
            raise _Bad(f"must not repeat an item, got {v!r}")
        return tuple(items)

    return check


def _is_cron(v: Any) -> bool:
    if not isinstance(v, str) or len(v) > 200 or _CONTROL.search(v.replace("\t", " ")):
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


def _is_zone(v: Any) -> bool:
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError, TypeError):
        return False
    return True


def _routes(v: Any) -> tuple[str, ...]:
    """Path prefixes (``/result``, a trailing ``/`` dropped) and host names (lower-cased)."""
    items = [] if v is None else [v] if isinstance(v, str) else v
    if not isinstance(items, list | tuple) or len(items) > 16:
        raise _Bad(f"must be a list of at most 16 path prefixes or host names, got {v!r}")
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or len(item) > 253:
            raise _Bad(f"must be a list of path prefixes or host names, got {item!r}")
        if item.startswith("/"):
            route = item.rstrip("/") if len(item) > 1 else item
            if not _ROUTE_PATH.fullmatch(item) or any(
                s in (".", "..") for s in route.split("/")[1:]
            ):
                raise _Bad(
                    f"path prefix {item!r}: '/' then segments of letters, digits and "
                    "'.', '_', '~', '-' (no '.' or '..' segment); '/' alone is the gateway's"
                )
            taken = next(
                (r for r in RESERVED_PATHS if route == r or route.startswith(r + "/")), None
            )
            if taken is not None:
                raise _Bad(f"path prefix {item!r} is under the gateway's own {taken!r}")
        else:
            route = item.lower()
            if not _ROUTE_HOST.fullmatch(route):
                raise _Bad(
                    f"{item!r} is neither a path prefix ('/result') nor a host name "
                    "('vote.example.com', no port)"
                )
        if route in out:
            raise _Bad(f"must not repeat a route, got {item!r} twice")
        out.append(route)
    return tuple(out)


_WORD = _rule(lambda v: isinstance(v, str) and re.fullmatch(r"\S+", v), "a string without spaces")
_BOOL = _rule(lambda v: isinstance(v, bool), "true or false")
_POSITIVE = _rule(lambda v: _num(v) and v > 0, "a number > 0", float)
_CHECKS: dict[str, _Check] = {
    "name": _rule(
        lambda v: isinstance(v, str) and _NAME.fullmatch(v),
        "a lower-case DNS label (a-z, 0-9 and '-', 1 to 63 characters, "
        "starting and ending with a letter or digit)",
    ),
    "image": _optional(
        _rule(
            lambda v: isinstance(v, str) and len(v) <= 512 and _IMAGE.fullmatch(v),
            "an image reference like 'busybox', 'swarmless/python:bookworm' or "
            "'registry.example:5000/team/app:1.2' (lower-case repository)",
        )
    ),
    "image_id": _optional(
        _rule(
            lambda v: isinstance(v, str) and _IMAGE_ID.fullmatch(v),
            "an image id like 'sha256:<64 hex digits>'",
        )
    ),
    "build": _optional(
        _rule(lambda v: isinstance(v, str) and v.strip() and "\0" not in v, "a directory")
    ),
    "dockerfile": _optional(
        _rule(
            lambda v: isinstance(v, str) and _inside(v),
            "a relative path inside the build folder, like 'Dockerfile.prod'",
        )
    ),
    "mode": _choice(MODES),
    "command": _optional(_command),
    "handler": _optional(
        _rule(
            lambda v: isinstance(v, str) and v.strip() and not _CONTROL.search(v),
            "a non-empty string without control characters",
        )
    ),
    "handler_kind": _choice(HANDLER_KINDS),
    "env": _mapping(
        " without '=' and not SWARMLESS_* (reserved); values may hold tabs and line breaks, "
        "no other control character",
        lambda k: "=" not in k and not k.startswith("SWARMLESS_"),
        _CONTROL_IN_VALUE,
    ),
    "env_file": _strings(_inside, "relative paths of .env files, like '.env'"),
    "secrets": _strings(_SECRET.fullmatch, "secret names (a-z, 0-9, '-', '_', '.')"),
    "timeout": _rule(lambda v: _num(v) and 0 < v <= 3600, "a number > 0 and <= 3600", float),
    "memory": _optional(_size(6 * MiB, MAX_MEMORY)),
    "cpus": _optional(
        _rule(lambda v: _num(v) and MIN_CPUS <= v <= 64, "a number from 0.01 to 64", float)
    ),
    "concurrency": _integer(1, 1000),
    "min_containers": _integer(0, 1000),
    "max_containers": _integer(1, 1000),
    "idle_timeout": _rule(
        lambda v: _num(v) and 0 <= v <= 7 * 86400, "a number from 0 to 604800 (a week)", float
    ),
    "buffer": _integer(0, 1000),
    "paused_buffer": _BOOL,
    "queue_size": _integer(0, 1_000_000),
    "max_body": _size(0, MAX_BODY),
    "max_output": _size(0, MAX_BODY),
    "pids": _optional(_integer(16, 4_194_304)),
    "log_size": _optional(_size(MiB, 1024**3)),
    "private": _BOOL,
    "labels": _mapping(
        " not starting with 'swarmless.' (reserved)", lambda k: k[:10] != "swarmless.", _CONTROL
    ),
    "network": _optional(
        _rule(
            lambda v: isinstance(v, str) and _NETWORK.fullmatch(v),
            "a Docker network name (letters, digits, '_', '.', '-')",
        )
    ),
    "retries": _integer(0, 100),
    "backoff": _rule(
        lambda v: _num(v) and 0 < v <= 86400, "a number > 0 and <= 86400 (a day)", float
    ),
    "max_age": _rule(
        lambda v: _num(v) and 0 < v <= 366 * 86400, "a number > 0 and <= 31622400 (a year)", float
    ),
    "async_concurrency": _optional(_integer(1, 1000)),
    "retry_sync": _BOOL,
    "schedule": _optional(
        _rule(
            _is_cron,
            "a cron expression like '*/5 * * * *' or '@hourly'",
            lambda v: " ".join(v.split()),
        )
    ),
    "timezone": _rule(_is_zone, "an IANA time zone like 'UTC' or 'Europe/Paris'"),
    "docker": _choice(DOCKER_ACCESS),
    "children_timeout": _rule(
        lambda v: _num(v) and 0 <= v <= 3600, "a number of seconds from 0 to 3600", float
    ),
    "routes": _routes,
    "placement": _strings(
        lambda s: ("==" in s or "!=" in s) and not _CONTROL.search(s),
        "constraints like 'node.role == worker'",
    ),
    "spread": _strings(
        lambda s: re.fullmatch(r"(node|engine)\.labels\.[^\s=]+", s) is not None,
        "node label names like 'node.labels.zone'",
    ),
}


def _validate(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each field on its own, then the rules between fields (only over valid fields)."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for field, check in _CHECKS.items():
        try:
            values[field] = check(raw[field])
        except _Bad as e:
            errors[field] = str(e)

    def valid(*fields: str) -> bool:
        return all(f in values for f in fields)

    if valid("image", "build") and values["image"] is None and values["build"] is None:
        errors["image"] = "required: give an image, a build directory, or both; got neither"
    if valid("build", "dockerfile") and values["dockerfile"] and values["build"] is None:
        errors["dockerfile"] = "needs 'build:' (the folder it builds), got no build folder"
    if valid("build") and values["build"] is not None:
        values["build"] = os.path.normpath(os.path.abspath(os.path.expanduser(values["build"])))
        if valid("name", "image") and values["image"] is None:
            values["image"] = f"swarmless-fn/{values['name']}:latest"
    if valid("min_containers", "max_containers"):
        low, high = values["min_containers"], values["max_containers"]
        if high < low:
            errors["max_containers"] = f"must be >= min_containers ({low}), got {high}"
    if valid("mode", "command", "handler", "handler_kind"):
        handler, kind, command = values["handler"], values["handler_kind"], values["command"]
        if handler is None and values["mode"] == "warm":
            if command is not None and kind != "wsgi":
                values["handler"] = shlex.join(command)
                values["handler_kind"] = "cgi" if kind == "cgi" else "command"
            else:
                errors["handler"] = (
                    "required in warm mode: 'module:callable' (python, wsgi) or a command "
                    "line (handler_kind: command or cgi), or give a command; got None"
                )
        elif (
            handler is not None
            and kind not in ("command", "cgi")
            and not _CALLABLE.fullmatch(handler)
        ):
            errors["handler"] = (
                f"must be 'module:callable' for handler_kind {kind}, got {handler!r}"
            )
    return values, errors


@functools.cache
def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(FunctionSpec):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
