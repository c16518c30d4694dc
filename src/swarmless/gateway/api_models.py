"""The bodies of the gateway's own API, as Pydantic models: what each route takes and
answers (the OpenFaaS routes' are :mod:`swarmless.gateway.openfaas_models`).

They describe the API, they do not validate it: a spec is validated once, by
:class:`~swarmless.spec.FunctionSpec`, and the routes answer plain dicts.
:data:`swarmless.gateway.schemas.OPERATIONS` ties each route to these models.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from swarmless.records import STATUSES

__all__ = [
    "CALL_ID",
    "NAME",
    "SECRET",
    "SIZE",
    "AsyncAccepted",
    "DetachedChild",
    "ErrorBody",
    "FunctionInfo",
    "FunctionSpecBody",
    "FunctionSpecModel",
    "Health",
    "InvocationLogs",
    "InvocationModel",
    "Rollout",
    "ScaleBody",
    "ScaleInfo",
    "ScheduleModel",
    "SpecUpdateBody",
]

NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
SECRET = r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$"
SIZE = r"^\s*\d{1,20}(\.\d{1,20})?\s*[kKmMgGtT]?([iI]?[bB])?\s*$"
CALL_ID = r"^[\x21-\x7e]{1,200}$"
Mode = Literal["oneshot", "cgi", "warm"]
HandlerKind = Literal["python", "wsgi", "command", "cgi"]
DockerAccess = Literal["none", "scoped", "host-socket"]
Scalar = str | int | float | bool


class ErrorBody(BaseModel):
    """Every error answer: a stable code, a message, and the error's own fields."""

    model_config = ConfigDict(extra="allow", title="Error")

    error: str = Field(
        description="A stable code: invalid_argument, invalid_spec, unauthorized, not_found, "
        "function_not_found, invocation_not_found, payload_too_large, queue_full, "
        "function_failed, container_error, invocation_timeout, gateway_unavailable, "
        "engine_unavailable, http_error, ...",
        examples=["invalid_spec"],
    )
    message: str = Field(description="What was wrong, for a person to read.")
    call_id: str | None = Field(None, description="The call this error belongs to.")
    fields: dict[str, str] | None = Field(
        None, description="invalid_spec: each field that is wrong, and how."
    )


class _SpecFields(BaseModel):
    """The fields shared by a spec as sent and a spec as stored."""

    model_config = ConfigDict(extra="forbid")

    build: str | None = Field(None, description="A build context directory (CLI side).")
    dockerfile: str | None = Field(
        None, description="The Dockerfile to build with, a path inside the build folder."
    )
    image_id: str | None = Field(
        None,
        pattern=r"^[a-z0-9]{1,16}:[0-9a-f]{32,128}$",
        description="What the image holds (the engine's id), set by the gateway at deploy: "
        "a deploy whose image changed is a new version.",
    )
    env_file: list[str] = Field(
        default_factory=list,
        description=".env files the CLI read into env (their names; the gateway reads none).",
    )
    mode: Mode = Field("oneshot", description="oneshot, cgi (one container per call) or warm.")
    handler: str | None = Field(
        None, description="Warm mode: 'module:callable' (python, wsgi) or a command line."
    )
    handler_kind: HandlerKind = "python"
    timeout: float = Field(30.0, gt=0, le=3600, description="Seconds a call may run.")
    cpus: float | None = Field(
        None, ge=0.01, le=64, description="CPUs (at most the engine host's)."
    )
    pids: int | None = Field(
        None,
        ge=16,
        le=4_194_304,
        description="Processes and threads per container (default: the gateway's).",
    )
    concurrency: int = Field(1, ge=1, le=1000, description="Calls one container serves at once.")
    min_containers: int = Field(0, ge=0, le=1000)
    max_containers: int = Field(10, ge=1, le=1000)
    idle_timeout: float = Field(300.0, ge=0, le=604800, description="Seconds idle before removal.")
    buffer: int = Field(0, ge=0, le=1000, description="Ready containers kept beyond demand.")
    paused_buffer: bool = False
    queue_size: int = Field(1000, ge=0, le=1_000_000, description="Calls that may wait.")
    private: bool = Field(False, description="Calls need the admin token.")
    network: str | None = Field(
        None, pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$", description="An existing network."
    )
    retries: int = Field(2, ge=0, le=100, description="Async: attempts after the first.")
    backoff: float = Field(1.0, gt=0, le=86400, description="Async: backoff base, seconds.")
    max_age: float = Field(86400.0, gt=0, le=31622400, description="Async: give up after (s).")
    async_concurrency: int | None = Field(None, ge=1, le=1000)
    retry_sync: bool = Field(
        False, description="Idempotent: a sync call whose container died is run again."
    )
    schedule: str | None = Field(
        None, max_length=200, description="A cron expression that fires ('*/5 * * * *')."
    )
    timezone: str = Field("UTC", description="An IANA time zone for the schedule.")
    docker: DockerAccess = Field("none", description="Docker access from inside the function.")
    children_timeout: float = Field(
        60.0,
        ge=0,
        le=3600,
        description="Seconds a call's child containers may outlive it (0: they die with it).",
    )
    routes: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list,
        max_length=16,
        description="Also served at these path prefixes ('/result') or host names.",
    )
    spread: list[Annotated[str, Field(pattern=r"^(node|engine)\.labels\.[^\s=]+$")]] = Field(
        default_factory=list, description="Swarm: spread over these node labels."
    )


class FunctionSpecBody(_SpecFields):
    """A function spec as a client sends it (sizes like '128m', a command line as a string)."""

    model_config = ConfigDict(
        extra="forbid",
        title="FunctionSpecBody",
        json_schema_extra={
            "examples": [
                {"name": "hello", "image": "swarmless/busybox:latest", "command": ["cat"]},
                {
                    "name": "greet",
                    "image": "swarmless/python:bookworm",
                    "mode": "warm",
                    "handler": "app:handle",
                    "memory": "128m",
                    "env": {"GREETING": "hi"},
                },
            ]
        },
    )

    name: str = Field(pattern=NAME, description="A DNS label: a-z, 0-9, '-'.")
    image: str | None = Field(
        None, max_length=512, description="The image (on the engine, or pullable)."
    )
    command: list[Scalar] | str | None = Field(
        None, description="Arguments, or a command line split like a shell would."
    )
    env: dict[str, Scalar] = Field(
        default_factory=dict,
        description="Environment; names without '=' or SWARMLESS_; no control characters "
        "(values may hold tabs and line breaks).",
    )
    memory: int | Annotated[str, Field(pattern=SIZE)] | None = Field(
        None, description="Bytes, or a size like '128m' (6 MiB to 1 TiB, the host's at most)."
    )
    max_body: int | Annotated[str, Field(pattern=SIZE)] = Field(
        10 * 1024**2, description="Request body limit: bytes or a size (up to 1 GiB)."
    )
    max_output: int | Annotated[str, Field(pattern=SIZE)] = Field(
        10 * 1024**2,
        description="Answer limit (stdout, a worker's result): bytes or a size (up to 1 GiB).",
    )
    log_size: int | Annotated[str, Field(pattern=SIZE)] | None = Field(
        None, description="Engine log kept per container: 1 MiB to 1 GiB (default: the gateway's)."
    )
    labels: dict[str, Scalar] = Field(
        default_factory=dict, description="Labels on the function's containers."
    )
    placement: list[str] | str = Field(default_factory=list, description="Swarm constraints.")
    secrets: list[Annotated[str, Field(pattern=SECRET)]] | str = Field(
        default_factory=list, description="Secrets mounted as /run/secrets/NAME."
    )


class SpecUpdateBody(FunctionSpecBody):
    """A function spec for ``PUT /system/functions/{name}``: the name is the URL's."""

    model_config = ConfigDict(
        extra="forbid",
        title="SpecUpdateBody",
        json_schema_extra={"examples": [{"image": "swarmless/busybox:latest", "command": ["cat"]}]},
    )

    name: str = Field(  # type: ignore[assignment]  # optional here: the URL names it
        None, pattern=NAME, description="The URL's name, if given."
    )


class FunctionSpecModel(_SpecFields):
    """A function spec as the gateway stores and answers it (every field, normalised)."""

    model_config = ConfigDict(extra="allow", title="FunctionSpec")

    name: str
    image: str | None
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    memory: int | None = None
    max_body: int = 10 * 1024**2
    max_output: int = 10 * 1024**2
    log_size: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)
    placement: list[str] = Field(default_factory=list)


class ScaleInfo(BaseModel):
    """A warm function's scaling: pinned count, the autoscaler's last decision and plans."""

    model_config = ConfigDict(extra="allow")

    pinned: int | None = None
    desired: int | None = None
    reason: str | None = None


class Rollout(BaseModel):
    """How a deploy's new version replaced the old one, before the deploy answered."""

    model_config = ConfigDict(extra="allow")

    state: Literal["none", "done", "pending", "failed"] = Field(
        description="none: nothing to roll; done: no old container takes calls any more; "
        "pending: some still do after the wait (?wait=S); failed: the new version's "
        "containers crash, the old ones serve on."
    )
    old: int = Field(0, description="Containers of older versions still taking calls.")
    waited: float = Field(0.0, description="Seconds the deploy waited.")
    reason: str | None = None


class FunctionInfo(BaseModel):
    """A deployed function: its spec, version, containers and scaling."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: int
    spec: FunctionSpecModel
    containers: dict[str, int] = Field(
        description="ready, starting, busy, in_flight, queued, async_queued, async_running."
    )
    scale: ScaleInfo
    previous_version: int | None = Field(
        None, description="A deploy's answer: the version before it (null: a new function)."
    )
    rollout: Rollout | None = Field(
        None, description="A deploy's answer: how the new version replaced the old one."
    )


class ScaleBody(BaseModel):
    """``{"replicas": N}`` pins a warm function to N containers; null unpins it;
    ``"wait": S`` answers once they are all ready (at most S seconds)."""

    model_config = ConfigDict(extra="allow")

    replicas: int | None = Field(ge=0, le=1000, description="Containers to keep; null: autoscale.")
    wait: float = Field(
        0,
        ge=0,
        le=3600,
        description="Seconds to wait for exactly `replicas` containers, all ready, before "
        "answering (0: answer at once). Past them: 504 `wait_timeout` (the pin stays); a "
        "container that fails before it is ready: 502 `function_failed`.",
    )


class DetachedChild(BaseModel):
    """A child container a call started through the scoped Docker API, and how it ended."""

    container: str = Field(description="The child's container id (12 hex digits).")
    image: str | None = None
    exit_code: int | None = None
    started_at: int | None = Field(None, description="Epoch ms.")
    finished_at: int = Field(description="Epoch ms.")
    duration_ms: float | None = None
    killed: bool = Field(
        description="Killed by swarmless: still running children_timeout seconds after the "
        "caller exited (or when the gateway stopped)."
    )
    error: str | None = None


class InvocationModel(BaseModel):
    """One invocation record."""

    model_config = ConfigDict(extra="allow", title="Invocation")

    id: str
    function: str
    mode: str
    status: Literal[STATUSES]  # type: ignore[valid-type]
    kind: str
    queued_at: int
    started_at: int | None = None
    finished_at: int | None = None
    wait_ms: float | None = None
    init_ms: float | None = None
    run_ms: float | None = None
    cold: bool | None = None
    container: str | None = None
    attempt: int = 1
    exit_code: int | None = None
    http_status: int | None = None
    request_size: int = 0
    response_size: int | None = None
    error: str | None = None
    parent: str | None = None
    callback: str | None = None
    late: bool = False
    children: list[str] | None = Field(None, description="Calls this one made (one record).")
    detached: list[DetachedChild] | None = Field(
        None, description="Child containers this call started, and how each ended (one record)."
    )


class InvocationLogs(BaseModel):
    """What one invocation printed."""

    id: str
    stdout: str
    stderr: str


class AsyncAccepted(BaseModel):
    """An async call accepted (queued, or the first call of its Idempotency-Key)."""

    model_config = ConfigDict(extra="allow")

    call_id: str
    status: str = Field(description="queued, duplicate, or the call's status while pending.")


class ScheduleModel(BaseModel):
    """A scheduled function and when it fires next."""

    model_config = ConfigDict(extra="allow", title="Schedule")

    function: str
    schedule: str
    timezone: str
    next_fire: str | None = Field(description="ISO time; null when it never fires again.")
    last_fired: str | None
    error: str | None = Field(None, description="Why it is skipped, when it is.")


class Health(BaseModel):
    """Liveness of this gateway (active or standby replica)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["ok", "degraded"]
    version: str
    role: str | None = None
    active: str | None = None
    #: Only while the store is away after start (``status`` is then ``degraded``).
    store: str | None = None
