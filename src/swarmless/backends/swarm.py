"""The Swarm backend: function containers as services on a Docker Swarm, placed by Swarm.

The gateway talks to one Swarm manager (``docker_host``); Swarm places every container,
honouring the function's placement constraints and CPU/memory reservations. Containers join
an attachable overlay (``settings.network``) with ``endpoint_mode: dnsrr`` (no IPVS needed)
and reach the gateway through the pull-based runtime API. An image in a registry
(``settings.registry``: ``swarmless build``/``deploy`` push there) runs by its digest, so
every node pulls the same bits; any other image runs as each node has it.
docs/swarm.md and docs/swarm-production.md have the whole picture.

- **One service per warm container** (1 replica, restart condition ``none``), its worker
  token in its environment: the dispatcher gives each worker its own token and stops chosen
  workers (idle ones, stuck ones), and Swarm can neither vary the environment between the
  tasks of one service nor remove a chosen task.
- **Noticing death**: a thread polls the manager's tasks and nodes twice a second; a worker
  whose task ended or whose node is not ``ready`` is reported to the backend's subscribers
  (its calls are requeued, the reconciler starts a replacement, Swarm places it on a live
  node): :mod:`swarmless.backends.swarm_watch`.
- **One-shot calls** are services with restart condition ``none``; stdin is a Docker config
  fed to the command by ``/bin/sh``; stdout/stderr come back from the task's logs
  (:mod:`swarmless.backends.swarm_oneshot`).
- **Secrets** held by the gateway become Swarm secrets named by their content's hash (Swarm
  secrets are immutable), mounted at ``/run/secrets/NAME``; they and the task templates are
  built by :mod:`swarmless.backends.swarm_specs`.
- Warm containers run the runtime (``RUNTIME_COMMAND``) from ``/opt/swarmless`` inside the
  image (bind mounts do not span nodes): ``swarmless build`` puts it there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types

from swarmless.backends.base import RUNTIME_COMMAND, ContainerInfo, WorkerLaunch
from swarmless.backends.swarm_limits import SwarmLimits, swarm_facts
from swarmless.backends.swarm_nodes import manager_runtime_ip
from swarmless.backends.swarm_oneshot import OneShotServices, latest
from swarmless.backends.swarm_specs import (
    create_service,
    pinned_image,
    remove_secret_versions,
    secret_labels,
    secret_name,
    secret_refs,
    task_template,
    unmanaged_secrets,
)
from swarmless.backends.swarm_watch import TaskWatch
from swarmless.config import Settings
from swarmless.engine import (
    LABEL_FUNCTION,
    LABEL_GATEWAY,
    LABEL_KIND,
    LABEL_MANAGED,
    LABEL_WORKER,
    connect,
    managed_labels,
    translate,
)
from swarmless.exceptions import SwarmlessError
from swarmless.registry import credentials
from swarmless.spec import FunctionSpec

__all__ = ["SwarmBackend"]

log = logging.getLogger("swarmless.backend.swarm")
T = TypeVar("T")

RUNTIME_DIR = "/opt/swarmless"


class SwarmBackend(OneShotServices, TaskWatch):
    """Function containers as services on a Docker Swarm (through one of its managers)."""

    #: The scoped Docker API runs children as services on the Swarm
    #: (:mod:`swarmless.proxy.swarm_server`), reached like the runtime API.
    scoped_docker_api = True
    scoped_docker_swarm = True

    def __init__(
        self,
        settings: Settings,
        *,
        labels: Mapping[str, str] | None = None,
        poll_interval: float = 0.5,
        stop_grace: float = 5.0,
    ) -> None:
        super().__init__(settings, labels=labels, name="swarm")
        self.poll_interval = poll_interval
        self.stop_grace = stop_grace
        self._runtime_ip = ""
        self._network_id = ""
        self._lock = threading.Lock()
        #: Warm services being watched: service id -> worker id.
        self._workers: dict[str, str] = {}
        #: Why a task did not run (``Status.Err``), for container_logs.
        self._errors: dict[str, str] = {}
        #: The latest poll: tasks by service, and the nodes that are not ready.
        self._tasks: dict[str, list[dict[str, Any]]] = {}
        self._down: set[str] = set()
        self._hostnames: dict[str, str] = {}
        self._images: dict[str, tuple[list[str], list[str]]] = {}
        self._no_logs: dict[str, float] = {}
        #: (image, image id) -> the digest reference services run (pinned_image).
        self._pinned: dict[tuple[str, str], str] = {}
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        #: Limits of every function container (read from the Swarm at start).
        self.limits = SwarmLimits.of(settings, node_cpus=math.inf, log_driver="")

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:  # started already (the server binds before lifespan)
            return
        self._loop = asyncio.get_running_loop()
        client = await self._call(
            connect, self.settings.docker_host, timeout=self.settings.engine_timeout
        )
        try:
            await self._call(self._check_manager, client)
            self._client = client
            await self._call(self._login)
            await self._call(self._ensure_network)
            await self._call(self._poll)
            node_cpus, log_driver = await self._call(swarm_facts, client.api)
            self.limits = SwarmLimits.of(self.settings, node_cpus=node_cpus, log_driver=log_driver)
        except BaseException:
            self._client = None
            client.close()
            raise
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="swarmless-swarm")
        self._watcher.start()

    async def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._watcher.join, 5)
        self._close_client()

    def runtime_host(self) -> str:
        return self._runtime_ip

    def _login(self) -> None:
        """Log the client in to the registry when credentials are set: the services it
        creates and the images it pulls carry them (``X-Registry-Auth``) to the nodes."""
        auth = credentials(self.settings)
        if auth is None or not self.settings.registry:
            return
        registry = self.settings.registry.partition("/")[0]
        try:
            self.client.api.login(auth["username"], auth["password"], registry=registry)
        except docker.errors.APIError as e:
            raise SwarmlessError(
                f"login to the registry {registry} as {auth['username']} failed: "
                f"{e.explanation or e}"
            ) from None

    def _check_manager(self, client: docker.DockerClient) -> None:
        self._runtime_ip = manager_runtime_ip(client, self.settings.docker_host)

    def _ensure_network(self) -> None:
        name = self.settings.network
        net = self._network("overlay", {**self.extra_labels, **managed_labels("network")})
        if net.attrs.get("Scope") != "swarm":
            raise SwarmlessError(
                f"network {name!r} is a {net.attrs.get('Driver')} network, not an overlay: "
                "use another SWARMLESS_NETWORK for the swarm backend"
            )
        self._network_id = str(net.id)

    # -- images --------------------------------------------------------------------

    def _pull_failed_hint(self, image: str) -> str:
        return (
            "; on a Swarm every node needs it: push it to a registry the nodes can reach "
            "and trust (settings.registry: swarmless build/deploy push there; "
            "docs/swarm-production.md), or load it onto each node "
            f"(scripts/swarm-cluster.sh load {image})"
        )

    def _image(self, spec: FunctionSpec) -> str:
        """The image services of ``spec`` run (:func:`.swarm_specs.pinned_image`)."""
        key = (spec.image or "", spec.image_id or "")
        with self._lock:
            found = self._pinned.get(key)
        if found is None:
            found = pinned_image(self.client.api, spec)
            if "@" not in found:  # not pinned (yet): asked again next time
                return found
            with self._lock:
                if len(self._pinned) > 256:  # one per function version: bounded anyway
                    self._pinned.clear()
                self._pinned[key] = found
        return found

    # -- services ------------------------------------------------------------------

    def _service_name(self, spec: FunctionSpec, suffix: str) -> str:
        return f"swarmless-{spec.name[:40]}-{suffix}"

    def _secrets(self, spec: FunctionSpec) -> list[docker.types.SecretReference]:
        """The function's secrets as Swarm secrets (:func:`.swarm_specs.secret_refs`)."""
        if not spec.secrets:
            return []
        labels = secret_labels(self.extra_labels, self.settings.instance)
        return secret_refs(self.client.api, spec, data_dir=self.settings.data_dir, labels=labels)

    async def put_secret(self, name: str, data: bytes) -> None:
        await super().put_secret(name, data)
        if self._client is not None:  # older versions that no service uses any more go
            await self._call(
                remove_secret_versions,
                self.client.api,
                name,
                instance=self.settings.instance,
                keep=secret_name(name, data),
            )

    async def delete_secret(self, name: str) -> bool:
        existed = await super().delete_secret(name)
        if self._client is not None:
            await self._call(
                remove_secret_versions, self.client.api, name, instance=self.settings.instance
            )
        return existed

    async def list_secrets(self) -> list[str]:
        """The gateway's secrets, and the Swarm's own (not made by swarmless)."""
        names = set(await super().list_secrets())
        if self._client is not None:

            def swarm() -> list[str]:
                with translate(api=self.client.api):
                    return unmanaged_secrets(self.client.api)

            names.update(await self._call(swarm))
        return sorted(names)

    def _task_template(
        self,
        spec: FunctionSpec,
        *,
        labels: Mapping[str, str],
        env: Mapping[str, str],
        command: list[str] | None,
        args: list[str] | None,
        configs: list[docker.types.ConfigReference] | None = None,
        avoid: Sequence[str] = (),
    ) -> docker.types.TaskTemplate:
        return task_template(
            spec,
            network=self.settings.network,
            labels=labels,
            env=env,
            command=command,
            args=args,
            secrets=self._secrets(spec),
            stop_grace=self.stop_grace,
            configs=configs,
            avoid=avoid,
            image=self._image(spec),
            limits=self.limits,
            oneshot=labels.get(LABEL_KIND) in ("oneshot", "cgi"),
        )

    def _create_service(
        self, name: str, template: docker.types.TaskTemplate, labels: Mapping[str, str]
    ) -> str:
        return create_service(self.client.api, name, template, labels)

    # -- warm containers -----------------------------------------------------------

    async def start_worker(self, launch: WorkerLaunch) -> str:
        spec = launch.spec
        env = launch.environment(pythonpath=RUNTIME_DIR)
        if self._callers is not None:
            env.update(self._callers.grant(spec, worker_id=launch.worker_id)[1])
        labels = self._labels("worker", spec, worker=launch.worker_id, version=str(launch.version))

        def create() -> str:
            with translate(image=spec.image, api=self.client.api):
                template = self._task_template(
                    spec,
                    labels=labels,
                    env=env,
                    command=list(RUNTIME_COMMAND),
                    args=None,
                )
                sid = self._create_service(
                    self._service_name(spec, launch.worker_id), template, labels
                )
            with self._lock:
                self._workers[sid] = launch.worker_id
            return sid

        return await self._call(create)

    async def stop_container(self, service_id: str, *, grace: float = 0) -> None:
        """Remove the service; Swarm stops its container (SIGTERM, ``stop_grace`` s, KILL)."""
        with self._lock:
            worker_id = self._workers.pop(service_id, None)
            self._errors.pop(service_id, None)
        if worker_id is not None:
            self._revoke(worker_id)

        def remove() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_service(service_id)

        with translate(api=self.client.api):
            await self._call(remove)

    # -- inspection ----------------------------------------------------------------

    async def container_logs(self, service_id: str, *, tail: int = 20) -> str:
        def read() -> str:
            try:
                data = b"".join(
                    self.client.api.service_logs(service_id, stdout=True, stderr=True, tail=tail)
                )
            except Exception:
                data = b""
            text = data.decode("utf-8", "replace").strip()
            with self._lock:
                err = self._errors.get(service_id, "")
            return "\n".join(x for x in (text, err) if x)

        return await self._call(read)

    async def list_containers(self) -> list[ContainerInfo]:
        def listing() -> list[ContainerInfo]:
            with translate(api=self.client.api):
                found = self.client.api.services(
                    filters={
                        "label": [
                            f"{LABEL_MANAGED}=true",
                            LABEL_FUNCTION,
                            f"{LABEL_GATEWAY}={self.settings.instance}",
                        ]
                    }
                )
            with self._lock:
                tasks = dict(self._tasks)
            out = []
            for s in found:
                labels = (s.get("Spec") or {}).get("Labels") or {}
                task = latest(tasks.get(s["ID"], []))
                state = ((task or {}).get("Status") or {}).get("State", "new")
                out.append(
                    ContainerInfo(
                        id=s["ID"],
                        function=labels.get(LABEL_FUNCTION, ""),
                        kind=labels.get(LABEL_KIND, ""),
                        worker_id=labels.get(LABEL_WORKER),
                        status=state,
                        labels=labels,
                    )
                )
            return out

        return await self._call(listing)
