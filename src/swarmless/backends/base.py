"""The backend interface: the one layer that starts and stops containers.

Two implementations: :mod:`swarmless.backends.docker` (one engine, a user-defined bridge
network) and :mod:`swarmless.backends.swarm` (services on an overlay network). The gateway,
dispatcher and reconciler only speak this interface; ``docker.errors`` never cross it.

What a backend is told, it is told through a method, once, by the gateway's wiring:
:meth:`Backend.subscribe` (who hears that a container died), :meth:`Backend.watch_engine`
(who hears that the engine stopped answering, and that it is back) and
:meth:`Backend.use_caller_tokens` (who gives each container its caller token: a
:class:`CallerGrants`, the gateway's :class:`~swarmless.proxy.tokens.CallerTokens`). It
imports nothing of the gateway, the dispatcher or the proxy.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import shlex
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeVar

import docker
import docker.errors

from swarmless.config import Settings
from swarmless.engine import LABEL_FUNCTION, LABEL_GATEWAY, managed_labels, translate
from swarmless.exceptions import SwarmlessError
from swarmless.ownership import ownership_labels
from swarmless.sdk.run_steps import pull_image
from swarmless.spec import FunctionSpec

__all__ = [
    "RUNTIME_COMMAND",
    "Backend",
    "CallerGrants",
    "ContainerInfo",
    "EngineBackend",
    "EngineListener",
    "ExitCallback",
    "OneShotResult",
    "WorkerLaunch",
]

T = TypeVar("T")

#: The command of a warm container: ``python3 -m swarmless.runtime`` without ``runpy``
#: (``-m`` imports ``runpy`` and ``importlib.util``, 4 ms of CPU at each start).
RUNTIME_COMMAND = ("python3", "-c", "from swarmless.runtime import main; raise SystemExit(main())")


class ExitCallback(Protocol):
    """Told that a container died: its id, its worker's id (None for a one-shot call's), its
    exit status, and whether the kernel killed it for exceeding its memory limit."""

    def __call__(
        self, container_id: str, worker_id: str | None, exit_code: int, oom: bool
    ) -> None: ...


class EngineListener(Protocol):
    """Told, on the event loop, that the engine stopped answering (``down``: why) or answers
    again (``down`` None: what happened meanwhile is for the listener to find out)."""

    def __call__(self, down: str | None) -> None: ...


class GrantedToken(Protocol):
    """One container's caller token (a :class:`~swarmless.proxy.tokens.Grant`)."""

    @property
    def token(self) -> str: ...


class CallerGrants(Protocol):
    """Issues and revokes the caller tokens of function containers, as a backend uses them
    (the gateway's :class:`~swarmless.proxy.tokens.CallerTokens`)."""

    def grant(
        self, spec: FunctionSpec, *, call_id: str | None = None, worker_id: str | None = None
    ) -> tuple[GrantedToken, dict[str, str]]:
        """A token for one container, and the environment that carries it."""
        ...

    def revoke(self, token: str) -> None: ...

    def revoke_container(self, labels: dict[str, str]) -> None:
        """Revoke the token of a container that died (found by its labels)."""
        ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class WorkerLaunch:
    """Everything needed to start one warm container."""

    spec: FunctionSpec
    worker_id: str
    token: str
    runtime_url: str
    version: int

    def environment(self, *, pythonpath: str) -> dict[str, str]:
        """The environment of the warm container: the spec's, then the runtime's
        (docs/runtime-api.md); ``pythonpath`` is where the runtime package is."""
        spec = self.spec
        handler, kind = spec.handler or "", spec.handler_kind
        if not handler and spec.command:
            handler, kind = shlex.join(spec.command), "command"
        env = dict(spec.env)
        env.update(
            {
                "SWARMLESS_RUNTIME_API": self.runtime_url,
                "SWARMLESS_WORKER_TOKEN": self.token,
                "SWARMLESS_FUNCTION": spec.name,
                "SWARMLESS_HANDLER": handler,
                "SWARMLESS_HANDLER_KIND": kind,
                "SWARMLESS_CONCURRENCY": str(spec.concurrency),
                "SWARMLESS_GATEWAY_URL": self.runtime_url,
                "PYTHONPATH": pythonpath,
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        return env


@dataclasses.dataclass(frozen=True, kw_only=True)
class OneShotResult:
    """What a one-shot (oneshot or cgi) container produced."""

    #: The container's id on one engine; on a swarm, the one-shot service's id.
    container: str
    exit_code: int
    stdout: bytes
    stderr: bytes
    oom: bool
    timed_out: bool
    #: ms spent creating and starting the container, and running it.
    init_ms: float
    run_ms: float
    #: stdout passed the spec's ``max_output``: the run was stopped, ``stdout`` is cut.
    output_exceeded: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContainerInfo:
    """A swarmless container the backend found on the engine."""

    id: str
    function: str
    kind: str
    worker_id: str | None
    status: str
    labels: Mapping[str, str]


class Backend(abc.ABC):
    """Starts, stops and lists the containers of deployed functions."""

    settings: Settings

    #: Whether the gateway runs the scoped Docker API (swarmless.proxy) for this backend's
    #: containers: it drives one engine, the one the containers run on.
    scoped_docker_api: ClassVar[bool] = False
    #: Labels on everything this backend creates, besides swarmless's own.
    extra_labels: Mapping[str, str] = MappingProxyType({})

    _exit_callbacks: tuple[ExitCallback, ...] = ()
    _engine_listeners: tuple[EngineListener, ...] = ()
    _engine_down: str | None = None
    _callers: CallerGrants | None = None

    def subscribe(self, on_exit: ExitCallback) -> None:
        """Call ``on_exit`` (on the event loop) whenever one of this backend's containers
        dies; the gateway's wiring subscribes the worker registry."""
        self._exit_callbacks = (*self._exit_callbacks, on_exit)

    def watch_engine(self, on_change: EngineListener) -> None:
        """Call ``on_change`` (on the event loop) when the engine stops answering and when it
        answers again; the gateway's wiring subscribes the active gateway. A backend that
        cannot tell never calls it (its engine always looks up)."""
        self._engine_listeners = (*self._engine_listeners, on_change)

    @property
    def engine_down(self) -> str | None:
        """Why the engine does not answer right now; None while it does (as far as this
        backend knows)."""
        return self._engine_down

    def _engine_changed(self, down: str | None) -> None:
        """The engine went down (``down``: why) or came back (None); tell the listeners
        once per change (call it on the event loop)."""
        if (down is None) == (self._engine_down is None):
            self._engine_down = down  # a newer reason, same state: nobody to tell
            return
        self._engine_down = down
        for on_change in self._engine_listeners:
            on_change(down)

    def use_caller_tokens(self, tokens: CallerGrants) -> None:
        """Give every container started from now on a caller token of its own from
        ``tokens`` (``SWARMLESS_TOKEN``: its calls to the gateway are its calls; and a
        scoped ``DOCKER_HOST`` when the backend serves the scoped Docker API)."""
        self._callers = tokens

    def _exited(
        self, container_id: str, worker_id: str | None, exit_code: int, oom: bool = False
    ) -> None:
        """Tell the subscribers that a container died (call it on the event loop)."""
        for on_exit in self._exit_callbacks:
            on_exit(container_id, worker_id, exit_code, oom)

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect, create the network, start watching container events."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop watching and release connections (containers are left to the caller)."""

    @abc.abstractmethod
    def runtime_host(self) -> str:
        """The address containers use to reach the gateway (an IP or DNS name)."""

    @abc.abstractmethod
    async def ensure_image(self, image: str) -> None:
        """Raise ImageNotFound unless ``image`` is on the engine or can be pulled, and
        InvocationTimeout when pulling it takes over ``pull_timeout``."""

    async def image_id(self, image: str) -> str | None:
        """The engine's id of ``image`` (what it holds: a deploy whose image changed is a
        new version); None when it is not there, or the backend cannot tell."""
        return None

    async def prepare_worker(self, spec: FunctionSpec) -> None:
        """Get ready to start warm containers of ``spec`` (the docker backend builds the
        bytecode of the runtime's imports for its image, in the background); by default,
        nothing. Never raises for the function: a start without it is only slower."""
        return

    async def remove_leftovers(self) -> int:
        """The gateway starts as the active one: remove what a previous gateway of this
        instance left besides function containers (the docker backend: bytecode build
        containers of a gateway killed during a build); returns how many. By default,
        nothing. Never raises: housekeeping."""
        return 0

    @abc.abstractmethod
    async def start_worker(self, launch: WorkerLaunch) -> str:
        """Start a warm container; returns the id the backend knows it by: the container's
        id on one engine, the Swarm service's id on a swarm (one service per worker). That
        id is what :meth:`stop_container` and :meth:`container_logs` take."""

    @abc.abstractmethod
    async def stop_container(self, container_id: str, /, *, grace: float = 0) -> None:
        """Stop (after ``grace`` seconds of SIGTERM) and remove a container (by the id
        :meth:`start_worker` returned: a service id on a swarm); gone is fine."""

    @abc.abstractmethod
    async def run_once(
        self,
        spec: FunctionSpec,
        *,
        call_id: str,
        args: Sequence[str],
        env: Mapping[str, str],
        stdin: bytes,
        timeout: float,
    ) -> OneShotResult:
        """Run one fresh container to completion (oneshot and cgi modes)."""

    # Secrets are files in ``<data_dir>/secrets`` (mode 0600): the docker backend
    # bind-mounts them, the swarm backend makes Docker secrets of them.

    async def put_secret(self, name: str, data: bytes) -> None:
        """Store a secret that functions naming it get as ``/run/secrets/<name>``."""
        folder = self.settings.data_dir / "secrets"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = folder / f".{name}.tmp"  # secret names never start with a dot
        tmp.touch(mode=0o600)
        tmp.write_bytes(data)
        tmp.replace(folder / name)  # a running function never reads half a secret

    async def delete_secret(self, name: str) -> bool:
        path = self.settings.data_dir / "secrets" / name
        existed = path.is_file()
        path.unlink(missing_ok=True)
        return existed

    async def list_secrets(self) -> list[str]:
        folder = self.settings.data_dir / "secrets"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name[0] != ".")

    async def pause_container(self, container_id: str) -> None:
        """Freeze a container (cgroup freezer): no CPU while idle, no start when needed."""
        raise SwarmlessError(f"{type(self).__name__} cannot pause containers")

    async def unpause_container(self, container_id: str) -> None:
        """Thaw a container frozen by :meth:`pause_container`."""
        raise SwarmlessError(f"{type(self).__name__} cannot pause containers")

    @abc.abstractmethod
    async def container_logs(self, container_id: str, /, *, tail: int = 20) -> str:
        """The last lines a container printed (to explain a crash); empty when gone (by the
        id :meth:`start_worker` returned: a service id on a swarm)."""

    @abc.abstractmethod
    async def list_containers(self) -> list[ContainerInfo]:
        """Every swarmless function container on the engine."""


class EngineBackend(Backend):
    """What both backends share: a Docker SDK client used from a thread pool, and labels.

    The Docker SDK is synchronous; its calls run in a dedicated pool sized for bursts of
    container starts (the default asyncio pool has only ``cpu + 4`` threads).
    """

    def __init__(
        self, settings: Settings, *, labels: Mapping[str, str] | None = None, name: str
    ) -> None:
        self.settings = settings
        #: Extra labels on everything created (tests use them to clean up by label), then
        #: the instance's own (swarmless.ownership: what its `swarmless gc` may remove).
        self.extra_labels = {**dict(labels or {}), **ownership_labels(settings)}
        self._client: docker.DockerClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix=f"swarmless-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            raise SwarmlessError("backend not started")
        return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def ensure_image(self, image: str) -> None:
        """The image is on the engine, else pulled within ``pull_timeout`` seconds
        (:func:`~swarmless.sdk.run_steps.pull_image`, on a Swarm by the manager), else
        ImageNotFound with the reason; a pull that takes longer (a registry that stopped
        answering) is abandoned, which cancels it on the engine: InvocationTimeout (504)."""

        def present() -> bool:
            with translate(image=image, api=self.client.api):
                try:
                    self.client.api.inspect_image(image)
                except docker.errors.ImageNotFound:
                    return False
            return True

        if await self._call(present):
            return
        hint = self._pull_failed_hint(image)
        await self._call(pull_image, self.client.api, image, self.settings.pull_timeout, hint=hint)

    async def image_id(self, image: str) -> str | None:
        def inspect() -> str | None:
            with translate(image=image, api=self.client.api):
                try:
                    return str(self.client.api.inspect_image(image)["Id"])
                except docker.errors.ImageNotFound:
                    return None

        return await self._call(inspect)

    def _pull_failed_hint(self, image: str) -> str:
        """What to add to the reason a missing image could not be pulled."""
        return ""

    def _close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _network(self, driver: str, labels: Mapping[str, str]) -> Any:
        """The function network (``settings.network``), created with ``driver`` if absent."""
        name = self.settings.network
        with translate(api=self.client.api):
            try:
                return self.client.networks.get(name)
            except docker.errors.NotFound:
                pass
            try:
                return self.client.networks.create(
                    name, driver=driver, attachable=True, labels=dict(labels)
                )
            except docker.errors.APIError:  # created meanwhile by another gateway
                return self.client.networks.get(name)

    def _labels(self, kind: str, spec: FunctionSpec, **more: str) -> dict[str, str]:
        """The spec's labels, the extra ones, then swarmless's own (which win)."""
        labels = dict(spec.labels)
        labels.update(self.extra_labels)
        labels.update(managed_labels(kind))
        labels[LABEL_FUNCTION] = spec.name
        labels[LABEL_GATEWAY] = self.settings.instance
        labels.update({f"swarmless.{k}": v for k, v in more.items()})
        return labels
