"""The local backend: function containers on one Docker Engine, on a user-defined bridge.

Warm containers run the runtime (``RUNTIME_COMMAND``: ``python -m swarmless.runtime``
without ``runpy``) from a read-only copy of the gateway's own runtime package, bind-mounted
at ``/opt/swarmless``: any image with Python 3 becomes a warm function without a rebuild,
and the runtime always speaks the gateway's protocol version. Beside it, once built for the
image, the bytecode of the runtime's imports (:mod:`~swarmless.backends.docker_bytecode`): a
container then starts without compiling them. Warm containers are watched through the
engine's event stream, so a worker that dies is noticed at once: the backend's subscribers
are told (:meth:`~.base.Backend.subscribe`: the worker registry requeues its calls in hand,
and reads a container that crashed before asking for work for its last lines before it is
removed). When the stream breaks (the engine restarted, the connection dropped) the watcher
reconnects with a backoff, and the engine's listeners (:meth:`~.base.Backend.watch_engine`)
hear that it went down and came back: the gateway then lists the containers to find what it
missed. Containers left by a gateway that crashed are found by label when the next one
starts.

An engine that accepts connections but never answers (a frozen ``dockerd``) leaves the
event stream silent, not broken. So every call waits at most ``engine_timeout`` for an
answer, a heartbeat pings the engine every :data:`HEARTBEAT_EVERY` seconds (with the same
bound), and a call or a ping that finds the engine not answering declares it down and
ends the event stream: the watcher reconnects, and tells when the engine is back
(:mod:`swarmless.backends.docker_events`).

The Docker SDK is synchronous; its calls run in a dedicated thread pool sized for bursts of
container starts (the default asyncio pool has only ``cpu + 4`` threads).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from swarmless.backends.base import RUNTIME_COMMAND, ContainerInfo, OneShotResult, WorkerLaunch
from swarmless.backends.docker_bytecode import WorkerBytecode
from swarmless.backends.docker_config import RUNTIME_MOUNT, ContainerConfig, runtime_package_dir

# Public here before the watcher had a module of its own: still importable from here.
from swarmless.backends.docker_events import HEARTBEAT_EVERY as HEARTBEAT_EVERY
from swarmless.backends.docker_events import RECONNECT_MAX as RECONNECT_MAX
from swarmless.backends.docker_events import RECONNECT_MIN as RECONNECT_MIN
from swarmless.backends.docker_events import WATCH_TIMEOUT as WATCH_TIMEOUT
from swarmless.backends.docker_events import EngineWatch
from swarmless.config import Settings
from swarmless.engine import (
    LABEL_CALL,
    LABEL_FUNCTION,
    LABEL_GATEWAY,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_WORKER,
    connect,
    managed_labels,
    translate,
)
from swarmless.exceptions import ContainerError, InvocationTimeout, SwarmlessError
from swarmless.ownership import select_containers
from swarmless.sdk.run import RunOptions, execute
from swarmless.sdk.run_steps import remove
from swarmless.spec import FunctionSpec

__all__ = ["DockerBackend", "runtime_package_dir"]

log = logging.getLogger("swarmless.backend")

LABEL_VERSION = "swarmless.version"


class DockerBackend(ContainerConfig, WorkerBytecode, EngineWatch):
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
        #: One-shot containers being removed after their call was answered.
        self._removals: set[concurrent.futures.Future[None]] = set()
        self._removals_lock = threading.Lock()
        self._init_bytecode()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:  # started already (the server binds before lifespan)
            return
        self._loop = asyncio.get_running_loop()
        client = await self._call(
            connect, self.settings.docker_host, timeout=self.settings.engine_timeout
        )
        self._client = client
        try:
            self._gateway_ip = await self._call(self._ensure_network)
            info = await self._call(self._engine_info)
        except BaseException:  # not started: the next start() begins again
            self._client = None
            with contextlib.suppress(Exception):
                client.close()
            raise
        self._host_cpus = float(info.get("NCPU") or "inf")
        self._log_driver = str(info.get("LoggingDriver") or "")
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._runtime_dir = runtime_package_dir(self.settings.data_dir)
        self._start_bytecode_upkeep()
        self._watcher = threading.Thread(
            target=self._watch_events, daemon=True, name="swarmless-events"
        )
        self._watcher.start()
        self._heartbeat = threading.Thread(
            target=self._beat, daemon=True, name="swarmless-heartbeat"
        )
        self._heartbeat.start()

    async def close(self) -> None:
        self._closing.set()
        if self._client is not None:
            await self._stop_bytecode_builds()
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()
        await self._removed()
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

    def _engine_info(self) -> dict[str, Any]:
        with translate(api=self.client.api):
            return dict(self.client.api.info())

    # -- warm containers -----------------------------------------------------------

    async def start_worker(self, launch: WorkerLaunch) -> str:
        spec = launch.spec
        assert self._runtime_dir is not None
        env = launch.environment(pythonpath=RUNTIME_MOUNT)
        if self._callers is not None:
            env.update(self._callers.grant(spec, worker_id=launch.worker_id)[1])
        labels = self._labels("worker", spec, worker=launch.worker_id, version=str(launch.version))
        # The bytecode of the runtime's imports, once built for the image (the first start
        # of an image without it has it built for the next ones).
        bytecode = self._bytecode_binds(spec, env)
        for mount in bytecode.values():
            env["PYTHONPYCACHEPREFIX"] = mount
        if not bytecode:
            await self.prepare_worker(spec)

        def create_and_start() -> str:
            api = self.client.api
            cfg = self._host_config(spec)
            cfg["binds"] = [
                *cfg.get("binds", []),
                *self._socket_binds(spec),
                f"{self._runtime_dir}:{RUNTIME_MOUNT}:ro",
                *(f"{host}:{mount}:ro" for host, mount in bytecode.items()),
            ]
            host_config = api.create_host_config(**cfg)
            host_config.update(self.limits(spec))
            with translate(image=spec.image, api=api):
                created = api.create_container(
                    image=spec.image,
                    command=list(RUNTIME_COMMAND),
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
        # An image gone from the engine since the deploy is pulled within the call's time.
        pull_timeout = min(self.settings.pull_timeout, timeout)
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
            pull_timeout=pull_timeout,
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
                    remove_with=self._remove_later,
                )
            except InvocationTimeout as e:  # its image is pulled and was not in time
                if pull_timeout == self.settings.pull_timeout:
                    raise
                raise InvocationTimeout(
                    f"function {spec.name!r} did not finish within {spec.timeout:g}s: pulling "
                    f"its image {spec.image} took all of it; nothing was run",
                    timeout=spec.timeout,
                ) from e
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

    def _remove_later(self, api: Any, container_id: str) -> None:
        """Remove a one-shot container off its call's critical path: once its output and
        exit status are in hand nothing waits for the removal (tens of ms of the engine's
        time), so the call is answered while it runs. :meth:`close` waits for those still
        running; a gateway killed meanwhile leaves them to the next one (found by label)."""
        try:
            future = self._pool.submit(remove, api, container_id)
        except RuntimeError:  # the pool is shut down: the backend is closing
            remove(api, container_id)
            return
        with self._removals_lock:
            self._removals.add(future)
        future.add_done_callback(self._removal_done)

    def _removal_done(self, future: concurrent.futures.Future[None]) -> None:
        with self._removals_lock:
            self._removals.discard(future)

    async def _removed(self) -> None:
        """Wait (at most ``engine_timeout``) for the one-shot removals still running; not
        for an engine known not to answer (the next gateway removes what is left)."""
        with self._removals_lock:
            pending = [asyncio.wrap_future(f) for f in self._removals]
        if pending and self.engine_down is None:
            await asyncio.wait(pending, timeout=self.settings.engine_timeout)

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
