"""The local backend: function containers on one Docker Engine, on a user-defined bridge.

Warm containers run ``python -m swarmless.runtime`` from a read-only copy of the gateway's
own runtime package, bind-mounted at ``/opt/swarmless``: any image with Python 3 becomes a
warm function without a rebuild, and the runtime always speaks the gateway's protocol
version. They are watched through the engine's event stream, so a worker that dies is
noticed at once: the backend's subscribers are told (:meth:`~.base.Backend.subscribe`: the
worker registry requeues its calls in hand, and reads a container that crashed before
asking for work for its last lines before it is removed). When the stream breaks (the
engine restarted, the connection dropped) the watcher reconnects with a backoff, and the
engine's listeners (:meth:`~.base.Backend.watch_engine`) hear that it went down and came
back: the gateway then lists the containers to find what it missed. Containers left
by a gateway that crashed are found by label when the next one starts.

An engine that accepts connections but never answers (a frozen ``dockerd``) leaves the
event stream silent, not broken. So every call waits at most ``engine_timeout`` for an
answer, a heartbeat pings the engine every :data:`HEARTBEAT_EVERY` seconds (with the same
bound), and a call or a ping that finds the engine not answering declares it down and
ends the event stream: the watcher reconnects, and tells when the engine is back.

The Docker SDK is synchronous; its calls run in a dedicated thread pool sized for bursts of
container starts (the default asyncio pool has only ``cpu + 4`` threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types

from swarmless.backends.base import ContainerInfo, EngineBackend, OneShotResult, WorkerLaunch
from swarmless.config import Settings
from swarmless.engine import (
    LABEL_CALL,
    LABEL_FUNCTION,
    LABEL_GATEWAY,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_WORKER,
    connect,
    endpoint,
    engine_failure,
    managed_labels,
    translate,
)
from swarmless.exceptions import ContainerError, SwarmlessError
from swarmless.ownership import select_containers
from swarmless.runtime.package import INIT as PACKAGE_INIT
from swarmless.sdk.run import RunOptions, execute
from swarmless.spec import FunctionSpec

__all__ = ["DockerBackend", "runtime_package_dir"]

log = logging.getLogger("swarmless.backend")
T = TypeVar("T")

LABEL_VERSION = "swarmless.version"
RUNTIME_MOUNT = "/opt/swarmless"

#: Seconds between two tries to reach an engine that stopped answering (doubling).
RECONNECT_MIN = 0.2
RECONNECT_MAX = 5.0
#: Seconds the event watcher's own client waits for an answer (its stream waits forever).
WATCH_TIMEOUT = 10
#: Seconds between two pings of the engine (each waits at most ``engine_timeout``).
HEARTBEAT_EVERY = 2.0


def runtime_package_dir(data_dir: Path) -> Path:
    """Copy the runtime package (and an empty ``swarmless/__init__.py``) under ``data_dir``.

    Only ``swarmless.runtime`` goes into containers: it needs nothing but the standard
    library, and the rest of the package (docker, starlette, ...) is not installed there.
    """
    import swarmless.runtime as runtime

    src = Path(runtime.__file__).parent
    root = data_dir / "runtime"
    dest = root / "swarmless" / "runtime"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (root / "swarmless" / "__init__.py").write_text(_STUB)
    return root


#: The mounted package's ``__init__`` (swarmless/runtime/package.py): an installed swarmless
#: (the full SDK) if the image has one, else the in-function client (``from_env()``,
#: invoke, spawn, result), while ``swarmless.runtime`` stays the gateway's own.
_STUB = PACKAGE_INIT


class DockerBackend(EngineBackend):
    """Function containers on one Docker Engine."""

    scoped_docker_api = True

    def __init__(self, settings: Settings, *, labels: Mapping[str, str] | None = None) -> None:
        super().__init__(settings, labels=labels, name="docker")
        self._gateway_ip = "127.0.0.1"
        self._runtime_dir: Path | None = None
        self._events: Any = None
        self._watcher: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._closing = threading.Event()
        self._watched_down: str | None = None  # the watcher's own view (its thread's)
        #: The engine's CPUs and default log driver (read at start): a default CPU limit
        #: is never over the host's, and log sizes apply only to drivers that take them.
        self._host_cpus = float("inf")
        self._log_driver = ""

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:  # started already (the server binds before lifespan)
            return
        self._loop = asyncio.get_running_loop()
        self._client = await self._call(
            connect, self.settings.docker_host, timeout=self.settings.engine_timeout
        )
        self._gateway_ip = await self._call(self._ensure_network)
        info = await self._call(self._engine_info)
        self._host_cpus = float(info.get("NCPU") or "inf")
        self._log_driver = str(info.get("LoggingDriver") or "")
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._runtime_dir = runtime_package_dir(self.settings.data_dir)
        self._watcher = threading.Thread(
            target=self._watch_events, daemon=True, name="swarmless-events"
        )
        self._watcher.start()
        self._heartbeat = threading.Thread(
            target=self._beat, daemon=True, name="swarmless-heartbeat"
        )
        self._heartbeat.start()

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in the pool; an engine that does not answer it is declared down at once."""
        try:
            return await super()._call(fn, *args, **kwargs)
        except Exception as e:
            why = engine_failure(e)
            if why is not None:
                self._engine_lost(why)
            raise

    def _engine_lost(self, why: str) -> None:
        """From any thread: a call found the engine not answering. Tell the listeners now,
        and end the event stream (a frozen engine leaves it silent): the watcher reconnects
        and tells them when the engine answers again."""
        if self._closing.is_set() or self._loop is None:
            return
        self._tell_engine(why)
        events = self._events
        if events is not None:
            with contextlib.suppress(Exception):
                events.close()

    def _beat(self) -> None:
        """Ping the engine every :data:`HEARTBEAT_EVERY` seconds while it is thought up."""
        client: docker.DockerClient | None = None
        timeout = self.settings.engine_timeout
        while not self._closing.wait(HEARTBEAT_EVERY):
            if self._watched_down is not None:  # the watcher is on it
                continue
            try:
                if client is None:
                    client = connect(self.settings.docker_host, timeout=timeout)
                client.api.ping()
            except Exception as e:
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
                self._engine_lost(engine_failure(e) or _reason(e))
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    async def close(self) -> None:
        self._closing.set()
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()
        self._close_client()

    def runtime_host(self) -> str:
        return self._gateway_ip

    def _ensure_network(self) -> str:
        """Create the bridge network if needed; return its gateway IP (the host's side)."""
        name = self.settings.network
        net = self._network("bridge", managed_labels("network"))
        with translate(api=self.client.api):
            net.reload()
        configs = (net.attrs.get("IPAM") or {}).get("Config") or []
        for cfg in configs:
            if cfg.get("Gateway"):
                return str(cfg["Gateway"]).split("/")[0]
        raise SwarmlessError(f"network {name!r} has no gateway address; remove it and restart")

    def _watch_events(self) -> None:
        """Follow the engine's container events until the backend closes.

        The stream breaks when the engine stops (a restart of dockerd) or the connection
        drops: the subscribers hear that the engine is down, and the watcher reconnects
        with a backoff (:data:`RECONNECT_MIN` doubling to :data:`RECONNECT_MAX`). Back, it
        asks for the events it missed while the engine kept them (``since``) and tells the
        subscribers the engine is up: they list the containers to find the rest (an engine
        that restarted forgot its events, not its stopped containers).
        """
        filters = {
            "type": "container",
            "event": ["die", "oom"],
            "label": [f"{LABEL_MANAGED}=true"],
        }
        oom: set[str] = set()  # the engine reports "oom" just before the "die" it causes
        since: int | None = None
        delay = RECONNECT_MIN
        client: docker.DockerClient | None = None
        while not self._closing.is_set():
            try:
                if client is None:
                    client = connect(self.settings.docker_host, timeout=WATCH_TIMEOUT)
                client.ping()
                self._events = client.events(decode=True, filters=filters, since=since)
            except Exception as e:
                self._tell_engine(engine_failure(e) or _reason(e))
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
                client = None
                self._closing.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            delay = RECONNECT_MIN
            self._tell_engine(None)
            why = "the event stream ended"
            try:
                for ev in self._events:
                    since = int(ev.get("time") or 0) or since
                    self._event(ev, oom)
            except Exception as e:
                why = engine_failure(e) or _reason(e)
            # Ended on purpose by a call that found the engine not answering: its reason
            # stands (a stream that ends says less).
            if not self._closing.is_set() and self._watched_down is None:
                self._tell_engine(why)
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _event(self, ev: dict[str, Any], oom: set[str]) -> None:
        attrs = (ev.get("Actor") or {}).get("Attributes") or {}
        cid = ev.get("id") or (ev.get("Actor") or {}).get("ID", "")
        if ev.get("status") == "oom" or ev.get("Action") == "oom":
            oom.add(cid)
            return
        try:
            code = int(attrs.get("exitCode", -1))
        except ValueError:
            code = -1
        killed = cid in oom
        oom.discard(cid)
        loop = self._loop
        if self._exit_callbacks and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._exited, cid, attrs.get(LABEL_WORKER), code, killed)

    def _tell_engine(self, down: str | None) -> None:
        """From the watcher's thread: the engine is down (why) or up (None)."""
        if (down is None) != (self._watched_down is None):
            self._watched_down = down
            if down is None:
                log.warning("the Docker Engine answers again: finding what changed meanwhile")
            else:
                log.warning("the Docker Engine does not answer (%s): reconnecting", down)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._engine_changed, down)

    def _engine_info(self) -> dict[str, Any]:
        with translate(api=self.client.api):
            return dict(self.client.api.info())

    # -- limits ----------------------------------------------------------------------

    def limits(self, spec: FunctionSpec) -> dict[str, Any]:
        """The limits every container of ``spec`` gets, as Engine API ``HostConfig``
        entries: CPUs, processes and threads, log size. Each is the spec's, else the
        gateway's default (``function_cpus``, ``function_pids``, ``function_log_size``;
        0 there: none). A log size applies to the json-file and local drivers (two files of
        half the size each); another driver is left as the engine's operator set it."""
        s = self.settings
        out: dict[str, Any] = {}
        cpus = spec.cpus if spec.cpus is not None else min(s.function_cpus, self._host_cpus)
        if cpus:
            out["NanoCpus"] = int(cpus * 1e9)
        pids = spec.pids if spec.pids is not None else s.function_pids
        if pids:
            out["PidsLimit"] = pids
        size = spec.log_size if spec.log_size is not None else s.function_log_size
        if size and self._log_driver in ("json-file", "local"):
            out["LogConfig"] = {
                "Type": self._log_driver,
                "Config": {"max-size": str(max(size // 2, 1024)), "max-file": "2"},
            }
        return out

    # -- warm containers -----------------------------------------------------------

    def _host_config(self, spec: FunctionSpec, **extra: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {"network_mode": spec.network or self.settings.network}
        if spec.memory is not None:
            cfg["mem_limit"] = spec.memory
        if spec.cpus is not None:
            cfg["nano_cpus"] = int(spec.cpus * 1e9)
        binds = self._secret_binds(spec)
        if binds:
            cfg["binds"] = binds
        cfg.update(extra)
        return cfg

    def _socket_binds(self, spec: FunctionSpec) -> list[str]:
        """``docker: host-socket``: the engine's own socket, on purpose (root on the host)."""
        if spec.docker != "host-socket":
            return []
        path = endpoint(self.settings.docker_host).socket or "/var/run/docker.sock"
        return [f"{path}:/var/run/docker.sock"]

    def _secret_binds(self, spec: FunctionSpec) -> list[str]:
        return [f"{self._secret_path(name)}:/run/secrets/{name}:ro" for name in spec.secrets]

    def _secret_path(self, name: str) -> Path:
        path = self.settings.data_dir / "secrets" / name
        if not path.is_file():
            raise SwarmlessError(
                f"secret {name!r} does not exist; create it: swarmless secret create {name} FILE"
            )
        return path

    async def start_worker(self, launch: WorkerLaunch) -> str:
        spec = launch.spec
        assert self._runtime_dir is not None
        env = launch.environment(pythonpath=RUNTIME_MOUNT)
        if self._callers is not None:
            env.update(self._callers.grant(spec, worker_id=launch.worker_id)[1])
        labels = self._labels("worker", spec, worker=launch.worker_id, version=str(launch.version))

        def create_and_start() -> str:
            api = self.client.api
            cfg = self._host_config(spec)
            cfg["binds"] = [
                *cfg.get("binds", []),
                *self._socket_binds(spec),
                f"{self._runtime_dir}:{RUNTIME_MOUNT}:ro",
            ]
            host_config = api.create_host_config(**cfg)
            host_config.update(self.limits(spec))
            with translate(image=spec.image, api=api):
                created = api.create_container(
                    image=spec.image,
                    command=["python3", "-m", "swarmless.runtime"],
                    environment=env,
                    labels=labels,
                    host_config=host_config,
                    name=f"swarmless-{spec.name}-{launch.worker_id}",
                )
                cid = str(created["Id"])
                try:
                    api.start(cid)
                except BaseException:
                    with contextlib.suppress(Exception):
                        api.remove_container(cid, force=True)
                    raise
            return cid

        return await self._call(create_and_start)

    async def stop_container(self, container_id: str, *, grace: float = 0) -> None:
        def stop() -> None:
            api = self.client.api
            with contextlib.suppress(docker.errors.APIError):
                if grace > 0:
                    api.stop(container_id, timeout=int(grace))
                api.remove_container(container_id, force=True)

        with translate(api=self.client.api):
            await self._call(stop)

    # -- one-shot containers -------------------------------------------------------

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
        command = [*(spec.command or []), *args] or None
        callers = self._callers
        grant, access = callers.grant(spec, call_id=call_id) if callers else (None, {})
        opts = RunOptions(
            spec.image or "",
            command,
            stdin=stdin,
            env={**spec.env, **env, **access},
            timeout=timeout,
            network=spec.network or self.settings.network,
            memory=spec.memory,
            cpus=spec.cpus,
            labels={
                **spec.labels,
                **self.extra_labels,
                LABEL_FUNCTION: spec.name,
                LABEL_CALL: call_id,
                LABEL_GATEWAY: self.settings.instance,
            },
            stdout=True,
            stderr=False,
            pull="missing",
            binds=[*self._secret_binds(spec), *self._socket_binds(spec)],
        )

        def run() -> OneShotResult:
            try:
                o = execute(
                    self.client.api,
                    opts,
                    kind=spec.mode,
                    max_output=spec.max_output,
                    host_config=self.limits(spec),
                )
            except ContainerError as e:  # the command could not be executed at all
                return OneShotResult(
                    container=e.container or "",
                    exit_code=e.exit_status,
                    stdout=b"",
                    stderr=e.stderr,
                    oom=False,
                    timed_out=False,
                    init_ms=0.0,
                    run_ms=0.0,
                )
            return OneShotResult(
                container=o.container_id,
                exit_code=o.status,
                stdout=o.stdout,
                stderr=o.stderr,
                oom=o.oom,
                timed_out=o.timed_out,
                init_ms=(o.t_started - o.t_create) * 1000,
                run_ms=(o.t_exited - o.t_started) * 1000,
                output_exceeded=o.output_exceeded,
            )

        try:
            return await self._call(run)
        finally:
            if grant is not None and callers is not None:
                callers.revoke(grant.token)

    async def pause_container(self, container_id: str) -> None:
        with translate(api=self.client.api):
            await self._call(self.client.api.pause, container_id)

    async def unpause_container(self, container_id: str) -> None:
        with translate(api=self.client.api):
            await self._call(self.client.api.unpause, container_id)

    async def container_logs(self, container_id: str, *, tail: int = 20) -> str:
        def read() -> str:
            try:
                data = self.client.api.logs(container_id, stdout=True, stderr=True, tail=tail)
            except Exception:
                return ""
            return bytes(data).decode("utf-8", "replace").strip()

        return await self._call(read)

    # -- inventory -----------------------------------------------------------------

    async def list_containers(self) -> list[ContainerInfo]:
        """This gateway's function containers: labelled with its instance on the container
        itself (a container whose ``swarmless.gateway`` label is its image's is someone
        else's, and never touched)."""

        def listing() -> list[ContainerInfo]:
            found = select_containers(
                self.client.api,
                {LABEL_GATEWAY: self.settings.instance},
                where={LABEL_MANAGED: "true", LABEL_FUNCTION: None},
            )
            if found.inherited:
                log.warning(
                    "%d container(s) carry this gateway's label only through their image: "
                    "left alone",
                    len(found.inherited),
                )
            return [
                ContainerInfo(
                    id=c.id,
                    function=c.labels.get(LABEL_FUNCTION, ""),
                    kind=c.labels.get(LABEL_KIND, ""),
                    worker_id=c.labels.get(LABEL_WORKER),
                    status=c.state,
                    labels=c.labels,
                )
                for c in found.owned
            ]

        return await self._call(listing)


def _reason(e: BaseException) -> str:
    """Why the engine did not answer, in a few words."""
    if isinstance(e, SwarmlessError):
        return e.message
    text = str(e) or type(e).__name__
    for marker in ("Connection refused", "No such file or directory", "Connection reset"):
        if marker in text:
            return marker
    return text[:200]
