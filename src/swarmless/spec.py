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

The checks live beside this module: :mod:`swarmless.spec_values` (what each kind of value
may be: sizes, command lines, routes, cron...), :mod:`swarmless.spec_fields` (one check per
field, then the rules between fields) and :mod:`swarmless.spec_envfile` (``env_file``).

>>> spec = FunctionSpec.from_dict({"name": "hello", "image": "busybox", "command": "echo hi"})
>>> spec.command, spec.timeout
(['echo', 'hi'], 30.0)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from swarmless.exceptions import InvalidArgument, SpecError
from swarmless.spec_envfile import read_env_files
from swarmless.spec_fields import validate
from swarmless.spec_values import (
    DOCKER_ACCESS,
    HANDLER_KINDS,
    MODES,
    RESERVED_PATHS,
    DockerAccess,
    HandlerKind,
    MiB,
    Mode,
    NeverFires,
    next_fire,
)

# Public here before the checks had modules of their own: still importable from here.
from swarmless.spec_values import MAX_BODY as MAX_BODY
from swarmless.spec_values import MAX_MEMORY as MAX_MEMORY
from swarmless.spec_values import MIN_CPUS as MIN_CPUS

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
        values, errors = validate(raw)
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


@functools.cache
def _defaults() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(FunctionSpec):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
