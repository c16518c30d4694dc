"""The Swarm backend: function containers as services on a Docker Swarm, placed by Swarm.

The gateway talks to one Swarm manager (``docker_host``); Swarm decides on which node each
container runs, honouring the function's placement constraints, CPU and memory
reservations and limits. Every container joins an attachable overlay network
(``settings.network``) with ``endpoint_mode: dnsrr`` (no virtual IP, so no IPVS is needed)
and reaches the gateway with the pull-based runtime API: the gateway never needs a
container's address.

**One service per warm container.** A warm container is a Swarm service with one replica
and restart condition ``none``; its worker token is in its environment. Why not one service
per function version with N replicas: the gateway's dispatcher gives every worker its own
token and, to recycle a stuck worker or drain an idle one, stops *that* container; Swarm can
neither give tasks of one service different secrets nor remove a chosen task (scaling down
removes tasks of its own choosing). A service per container keeps both exact, at the price
of one service create per container instead of one replica count update (bench/swarm.py
measures the difference). Services of one function carry the same labels
(``swarmless.function``, ``swarmless.version``), so ``docker service ls -f
label=swarmless.function=NAME`` shows them together, and Swarm spreads them over the nodes
as it spreads any tasks (the least loaded node first).

**Noticing death.** A thread polls the manager (tasks and nodes, twice a second): a worker
whose task ended, was rejected, or whose node is no longer ``ready`` is reported through
``on_exit`` at once, so the dispatcher requeues the calls it held and the reconciler starts
a replacement, which Swarm places on a node that is up. Node loss is seen after Swarm's
dispatcher heartbeat expires (3 heartbeat periods; ``docker swarm update
--dispatcher-heartbeat 1s`` makes that 3 s).

**One-shot calls** (``oneshot``, ``cgi``) are services with restart condition ``none``; the
call's stdin is a Docker config mounted at ``/run/swarmless-stdin`` and fed to the command
by ``/bin/sh`` (so a call with a body needs a shell in the image; one without does not), and
stdout and stderr are read back from the task's logs (so they pass through the log driver:
text, not arbitrary bytes). Swarm does not report OOM kills: exit status 137 of a container
with a memory limit that was not killed for its timeout is reported as one.

**Images** are never resolved against a registry (``--no-resolve-image``): each node uses
the image it has, so a cluster without a registry works when the image is loaded onto every
node (``scripts/swarm-cluster.sh load IMAGE``). Warm containers run ``python3 -m
swarmless.runtime`` from ``/opt/swarmless`` *inside the image* (bind mounts do not span
nodes): ``swarmless build`` puts it there for warm functions.

Environment templates: each container gets ``SWARMLESS_NODE`` (the node's hostname) and
``SWARMLESS_TASK`` (the Swarm task name); as in any Swarm service, ``{{`` in a function's
own environment values is read as a template.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types

from swarmless.backends.base import Backend, ContainerInfo, OneShotResult, WorkerLaunch
from swarmless.backends.docker import LABEL_GATEWAY, LABEL_WORKER
from swarmless.config import Settings
from swarmless.engine import (
    LABEL_CALL,
    LABEL_FUNCTION,
    LABEL_KIND,
    LABEL_MANAGED,
    connect,
    engine_address,
    managed_labels,
    translate,
)
from swarmless.exceptions import ImageNotFound, PayloadTooLarge, SwarmlessError
from swarmless.spec import FunctionSpec

__all__ = ["NodeInfo", "SwarmBackend", "list_nodes", "placement"]

log = logging.getLogger("swarmless.backend.swarm")
T = TypeVar("T")

RUNTIME_DIR = "/opt/swarmless"
STDIN_PATH = "/run/swarmless-stdin"
#: Docker configs hold at most 500 KB: the largest stdin a one-shot call can get.
STDIN_LIMIT = 500 * 1000
#: Task states after which a task's container is gone or never ran.
TERMINAL = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
#: The exit status reported for a container lost with its node (as if killed).
LOST = 137
#: The exit status reported for a task Swarm could not run (image missing, no node, ...).
NOT_RUN = 125


class NodeInfo:
    """A Swarm node as ``swarmless doctor`` and ``ls --nodes`` show it."""

    __slots__ = ("addr", "availability", "hostname", "id", "leader", "role", "state")

    def __init__(self, node: Mapping[str, Any]) -> None:
        spec = node.get("Spec") or {}
        status = node.get("Status") or {}
        self.id = str(node.get("ID", ""))
        self.hostname = str((node.get("Description") or {}).get("Hostname", ""))
        self.role = str(spec.get("Role", ""))
        self.availability = str(spec.get("Availability", ""))
        self.state = str(status.get("State", ""))
        self.addr = str(status.get("Addr", ""))
        self.leader = bool((node.get("ManagerStatus") or {}).get("Leader", False))


def list_nodes(client: docker.DockerClient) -> list[NodeInfo]:
    """The nodes of the Swarm ``client`` manages, by hostname."""
    with translate(api=client.api):
        nodes = client.api.nodes()
    return sorted((NodeInfo(n) for n in nodes), key=lambda n: n.hostname)


def placement(client: docker.DockerClient) -> dict[str, Counter[str]]:
    """Running swarmless containers per node hostname, counted by function.

    Read from the Swarm manager ``client`` talks to (every gateway's services, by label).
    """
    with translate(api=client.api):
        nodes = {
            n["ID"]: (n.get("Description") or {}).get("Hostname", n["ID"])
            for n in client.api.nodes()
        }
        tasks = client.api.tasks(
            filters={"label": f"{LABEL_MANAGED}=true", "desired-state": "running"}
        )
    out: dict[str, Counter[str]] = {name: Counter() for name in nodes.values()}
    for t in tasks:
        if (t.get("Status") or {}).get("State") != "running" or not t.get("NodeID"):
            continue
        labels = ((t.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
        node = nodes.get(t["NodeID"], t["NodeID"])
        out.setdefault(node, Counter())[labels.get(LABEL_FUNCTION, "?")] += 1
    return out


def _route_to(host: str) -> str:
    """The local address this machine uses to reach ``host`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(host), 9))
        return str(s.getsockname()[0])


def _latest(tasks: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    if not tasks:
        return None
    return max(tasks, key=lambda t: ((t.get("Version") or {}).get("Index", 0), t["CreatedAt"]))


def _exit_code(task: Mapping[str, Any]) -> int | None:
    code = ((task.get("Status") or {}).get("ContainerStatus") or {}).get("ExitCode")
    return int(code) if isinstance(code, int) else None


class SwarmBackend(Backend):
    """Function containers as services on a Docker Swarm (through one of its managers)."""

    def __init__(
        self,
        settings: Settings,
        *,
        labels: Mapping[str, str] | None = None,
        poll_interval: float = 0.5,
        stop_grace: float = 5.0,
    ) -> None:
        self.settings = settings
        #: Extra labels on every service and container (tests use them to clean up by label).
        self.extra_labels = dict(labels or {})
        self.poll_interval = poll_interval
        self.stop_grace = stop_grace
        self._client: docker.DockerClient | None = None
        self._pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="swarmless-swarm")
        self._loop: asyncio.AbstractEventLoop | None = None
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
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            raise SwarmlessError("backend not started")
        return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:  # started already (the server binds before lifespan)
            return
        self._loop = asyncio.get_running_loop()
        client = await self._call(connect, self.settings.docker_host)
        try:
            await self._call(self._check_manager, client)
            self._client = client
            await self._call(self._ensure_network)
            await self._call(self._poll)
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
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def runtime_host(self) -> str:
        return self._runtime_ip

    def _check_manager(self, client: docker.DockerClient) -> None:
        address = engine_address(self.settings.docker_host)
        with translate(api=client.api):
            info = client.info()
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise SwarmlessError(
                f"the Docker Engine at {address} is not a Swarm manager "
                f"(swarm state {swarm.get('LocalNodeState') or 'inactive'!r}): point "
                "SWARMLESS_DOCKER_HOST at a manager, or run `docker swarm init` there"
            )
        parts = urllib.parse.urlsplit(address)
        if parts.scheme in ("tcp", "http", "https") and parts.hostname:
            # The gateway runs off the manager: containers reach it at our side of that route.
            self._runtime_ip = _route_to(parts.hostname)
        else:  # on the manager itself: its Swarm address is reachable from every node
            self._runtime_ip = str(swarm.get("NodeAddr") or "127.0.0.1")

    def _ensure_network(self) -> None:
        name = self.settings.network
        with translate(api=self.client.api):
            try:
                net = self.client.networks.get(name)
            except docker.errors.NotFound:
                try:
                    net = self.client.networks.create(
                        name,
                        driver="overlay",
                        attachable=True,
                        labels={**self.extra_labels, **managed_labels("network")},
                    )
                except docker.errors.APIError:  # created meanwhile by another gateway
                    net = self.client.networks.get(name)
        if net.attrs.get("Scope") != "swarm":
            raise SwarmlessError(
                f"network {name!r} is a {net.attrs.get('Driver')} network, not an overlay: "
                "use another SWARMLESS_NETWORK for the swarm backend"
            )
        self._network_id = str(net.id)

    # -- watching ------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self._poll()
            except Exception as e:  # the manager may be briefly away; keep watching
                log.debug("poll failed: %s", e)

    def _poll(self) -> None:
        api = self.client.api
        nodes = api.nodes()
        tasks = api.tasks(filters={"label": f"{LABEL_GATEWAY}={self.settings.instance}"})
        by_service: dict[str, list[dict[str, Any]]] = {}
        for t in tasks:
            by_service.setdefault(t["ServiceID"], []).append(t)
        down = {n["ID"] for n in nodes if (n.get("Status") or {}).get("State") != "ready"}
        with self._lock:
            self._tasks, self._down = by_service, down
            self._hostnames = {
                n["ID"]: (n.get("Description") or {}).get("Hostname", "") for n in nodes
            }
            watched = dict(self._workers)
        for sid, wid in watched.items():
            state = self._dead(by_service.get(sid, []), down)
            if state is not None:
                self._report(sid, wid, state)

    def _dead(self, tasks: Sequence[Mapping[str, Any]], down: set[str]) -> int | None:
        """The exit status of a worker service's task when it is gone, else None."""
        task = _latest(tasks)
        if task is None:
            return None  # not scheduled yet (or removed by us)
        status = task.get("Status") or {}
        state = status.get("State", "")
        if state in TERMINAL:
            code = _exit_code(task)
            if code is None:
                code = LOST if state in ("shutdown", "orphaned", "remove") else NOT_RUN
            if status.get("Err"):
                with self._lock:
                    self._errors[task["ServiceID"]] = str(status["Err"])
            return code
        if task.get("NodeID") in down:
            node = self._hostnames.get(task["NodeID"], task["NodeID"])
            with self._lock:
                self._errors[task["ServiceID"]] = f"node {node} went down"
            return LOST
        return None

    def _report(self, service_id: str, worker_id: str, code: int) -> None:
        with self._lock:
            if self._workers.pop(service_id, None) is None:
                return
        handler, loop = self.on_exit, self._loop
        if handler is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(handler, service_id, worker_id, code)

    def placement(self) -> dict[str, str]:
        """Where each service's task runs now: service id -> node hostname."""
        with self._lock:
            out = {}
            for sid, tasks in self._tasks.items():
                task = _latest(tasks)
                if task is not None and task.get("NodeID"):
                    out[sid] = self._hostnames.get(task["NodeID"], task["NodeID"])
            return out

    # -- images --------------------------------------------------------------------

    async def ensure_image(self, image: str) -> None:
        def check() -> None:
            with translate(image=image, api=self.client.api):
                try:
                    self.client.images.get(image)
                except docker.errors.ImageNotFound:
                    try:
                        self.client.images.pull(image)
                    except docker.errors.APIError as e:
                        raise ImageNotFound(
                            image,
                            f"{e.explanation or e}; on a Swarm every node needs it: push it "
                            "to a registry the nodes can reach, or load it onto each node "
                            f"(scripts/swarm-cluster.sh load {image})",
                        ) from e

        await self._call(check)

    # -- services ------------------------------------------------------------------

    def _labels(self, kind: str, spec: FunctionSpec, **more: str) -> dict[str, str]:
        labels = dict(spec.labels)
        labels.update(self.extra_labels)
        labels.update(managed_labels(kind))
        labels[LABEL_FUNCTION] = spec.name
        labels[LABEL_GATEWAY] = self.settings.instance
        labels.update({f"swarmless.{k}": v for k, v in more.items()})
        return labels

    def _service_name(self, spec: FunctionSpec, suffix: str) -> str:
        return f"swarmless-{spec.name[:40]}-{suffix}"

    def _secrets(self, spec: FunctionSpec) -> list[docker.types.SecretReference]:
        """Swarm secrets by name; one missing in Swarm is created from the gateway's file."""
        refs = []
        api = self.client.api
        for name in spec.secrets:
            found = [s for s in api.secrets(filters={"name": name}) if s["Spec"]["Name"] == name]
            if found:
                sid = str(found[0]["ID"])
            else:
                path = self.settings.data_dir / "secrets" / name
                if not path.is_file():
                    raise SwarmlessError(
                        f"secret {name!r} does not exist in the Swarm nor in {path.parent}: "
                        f"create it (docker secret create {name} FILE, on a manager)"
                    )
                labels = {**self.extra_labels, **managed_labels("secret")}
                try:
                    sid = str(api.create_secret(name, path.read_bytes(), labels=labels)["ID"])
                except docker.errors.APIError:  # created meanwhile
                    found = api.secrets(filters={"name": name})
                    sid = str(next(s for s in found if s["Spec"]["Name"] == name)["ID"])
            refs.append(docker.types.SecretReference(sid, name, filename=name))
        return refs

    def _task_template(
        self,
        spec: FunctionSpec,
        *,
        labels: Mapping[str, str],
        env: Mapping[str, str],
        command: list[str] | None,
        args: list[str] | None,
        configs: list[docker.types.ConfigReference] | None = None,
    ) -> docker.types.TaskTemplate:
        env = {
            **env,
            "SWARMLESS_NODE": "{{.Node.Hostname}}",
            "SWARMLESS_TASK": "{{.Task.Name}}",
        }
        container = docker.types.ContainerSpec(
            image=spec.image or "",
            command=command,
            args=args,
            env=[f"{k}={v}" for k, v in env.items()],
            labels=dict(labels),
            secrets=self._secrets(spec) or None,
            configs=configs,
            stop_grace_period=int(self.stop_grace * 1e9),
            init=False,
        )
        resources = None
        if spec.memory is not None or spec.cpus is not None:
            nano = int(spec.cpus * 1e9) if spec.cpus is not None else None
            resources = docker.types.Resources(
                cpu_limit=nano,
                mem_limit=spec.memory,
                cpu_reservation=nano,
                mem_reservation=spec.memory,
            )
        network = spec.network or self.settings.network
        return docker.types.TaskTemplate(
            container,
            resources=resources,
            restart_policy=docker.types.RestartPolicy(condition="none"),
            placement=docker.types.Placement(constraints=list(spec.placement)) or None,
            networks=[docker.types.NetworkAttachmentConfig(network)],
        )

    def _create_service(
        self, name: str, template: docker.types.TaskTemplate, labels: Mapping[str, str]
    ) -> str:
        # No image resolution: each node runs the image it has (no registry needed).
        created = self.client.api.create_service(
            template,
            name=name,
            labels=dict(labels),
            mode=docker.types.ServiceMode("replicated", replicas=1),
            endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
        )
        return str(created["ID"])

    # -- warm containers -----------------------------------------------------------

    async def start_worker(self, launch: WorkerLaunch) -> str:
        spec = launch.spec
        handler = spec.handler or ""
        kind = spec.handler_kind
        if not handler and spec.command:
            handler, kind = " ".join(spec.command), "command"
        env = dict(spec.env)
        env.update(
            {
                "SWARMLESS_RUNTIME_API": launch.runtime_url,
                "SWARMLESS_WORKER_TOKEN": launch.token,
                "SWARMLESS_FUNCTION": spec.name,
                "SWARMLESS_HANDLER": handler,
                "SWARMLESS_HANDLER_KIND": kind,
                "SWARMLESS_CONCURRENCY": str(spec.concurrency),
                "SWARMLESS_GATEWAY_URL": launch.runtime_url,
                "PYTHONPATH": RUNTIME_DIR,
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        labels = self._labels("worker", spec, worker=launch.worker_id, version=str(launch.version))

        def create() -> str:
            with translate(image=spec.image, api=self.client.api):
                template = self._task_template(
                    spec,
                    labels=labels,
                    env=env,
                    command=["python3", "-m", "swarmless.runtime"],
                    args=None,
                )
                sid = self._create_service(
                    self._service_name(spec, launch.worker_id), template, labels
                )
            with self._lock:
                self._workers[sid] = launch.worker_id
            return sid

        return await self._call(create)

    async def stop_container(self, container_id: str, *, grace: float = 0) -> None:
        """Remove the service; Swarm stops its container (SIGTERM, ``stop_grace`` s, KILL)."""
        with self._lock:
            self._workers.pop(container_id, None)
            self._errors.pop(container_id, None)

        def remove() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_service(container_id)

        with translate(api=self.client.api):
            await self._call(remove)

    # -- one-shot containers -------------------------------------------------------

    def _argv(self, image: str, command: list[str] | None) -> list[str]:
        """The full argv a container of ``image`` runs with ``command`` as its CMD."""
        if image not in self._images:
            config = self.client.api.inspect_image(image).get("Config") or {}
            self._images[image] = (
                list(config.get("Entrypoint") or []),
                list(config.get("Cmd") or []),
            )
        entrypoint, cmd = self._images[image]
        return [*entrypoint, *(command if command is not None else cmd)]

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
        if len(stdin) > STDIN_LIMIT:
            raise PayloadTooLarge(
                f"a {spec.mode} call on the swarm backend takes at most {STDIN_LIMIT} bytes of "
                f"input (a Docker config), got {len(stdin)}; use a warm function for more"
            )
        command = [*(spec.command or []), *args] or None
        labels = self._labels(spec.mode, spec, call=call_id)
        labels[LABEL_CALL] = call_id
        return await self._call(
            self._run_once, spec, labels, command, {**spec.env, **env}, stdin, timeout
        )

    def _run_once(
        self,
        spec: FunctionSpec,
        labels: dict[str, str],
        command: list[str] | None,
        env: dict[str, str],
        stdin: bytes,
        timeout: float,
    ) -> OneShotResult:
        api = self.client.api
        t0 = time.monotonic()
        deadline = t0 + timeout
        suffix = secrets.token_hex(6)
        config_id = ""
        sid = ""
        try:
            with translate(image=spec.image, api=api):
                configs = None
                args = command
                entry = None
                if stdin:
                    name = f"swarmless-stdin-{suffix}"
                    config_id = str(api.create_config(name, stdin, labels=labels)["ID"])
                    configs = [docker.types.ConfigReference(config_id, name, filename=STDIN_PATH)]
                    argv = self._argv(spec.image or "", command)
                    entry = ["/bin/sh", "-c", f'exec "$@" <{STDIN_PATH}', "sh", *argv]
                    args = None
                template = self._task_template(
                    spec, labels=labels, env=env, command=entry, args=args, configs=configs
                )
                sid = self._create_service(self._service_name(spec, suffix), template, labels)
            return self._wait_once(spec, sid, t0, deadline)
        finally:
            if sid:
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_service(sid)
            if config_id:
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_config(config_id)

    def _wait_once(self, spec: FunctionSpec, sid: str, t0: float, deadline: float) -> OneShotResult:
        api = self.client.api
        started: float | None = None
        task: Mapping[str, Any] | None = None
        delay = 0.03
        while True:
            with translate(api=api):
                task = _latest(api.tasks(filters={"service": sid}))
            state = ((task or {}).get("Status") or {}).get("State", "")
            now = time.monotonic()
            if started is None and state in ("running", *TERMINAL):
                started = now
            if state in TERMINAL:
                break
            if task is not None and task.get("NodeID") in self._down_nodes():
                node = self._hostnames.get(task["NodeID"], task["NodeID"])
                return self._result(sid, LOST, b"", f"node {node} went down".encode(), t0, started)
            if now >= deadline:
                break
            time.sleep(min(delay, max(deadline - now, 0.001)))
            delay = min(delay * 1.5, 0.25)
        status = (task or {}).get("Status") or {}
        state = status.get("State", "")
        if state not in TERMINAL:
            if started is None:  # never ran: say why Swarm could not place or start it
                why = status.get("Err") or status.get("Message") or state or "not scheduled"
                return self._result(
                    sid,
                    NOT_RUN,
                    b"",
                    f"Swarm did not start the task within the timeout: {why}".encode(),
                    t0,
                    None,
                )
            stdout, stderr = self._logs(sid)
            return self._result(sid, LOST, stdout, stderr, t0, started, timed_out=True)
        code = _exit_code(task or {})
        if code is None:
            why = status.get("Err") or status.get("Message") or state
            return self._result(
                sid, NOT_RUN, b"", f"Swarm could not run it: {why}".encode(), t0, started
            )
        stdout, stderr = self._logs(sid)
        oom = code == LOST and spec.memory is not None
        return self._result(sid, code, stdout, stderr, t0, started, oom=oom)

    def _down_nodes(self) -> set[str]:
        with self._lock:
            return set(self._down)

    def _logs(self, sid: str) -> tuple[bytes, bytes]:
        api = self.client.api
        out = b"".join(api.service_logs(sid, stdout=True, stderr=False))
        err = b"".join(api.service_logs(sid, stdout=False, stderr=True))
        return out, err

    def _result(
        self,
        sid: str,
        code: int,
        stdout: bytes,
        stderr: bytes,
        t0: float,
        started: float | None,
        *,
        timed_out: bool = False,
        oom: bool = False,
    ) -> OneShotResult:
        now = time.monotonic()
        started = started if started is not None else now
        return OneShotResult(
            container=sid,
            exit_code=code,
            stdout=stdout,
            stderr=stderr,
            oom=oom,
            timed_out=timed_out,
            init_ms=(started - t0) * 1000,
            run_ms=(now - started) * 1000,
        )

    # -- inspection ----------------------------------------------------------------

    async def container_logs(self, container_id: str, *, tail: int = 20) -> str:
        def read() -> str:
            try:
                data = b"".join(
                    self.client.api.service_logs(container_id, stdout=True, stderr=True, tail=tail)
                )
            except Exception:
                data = b""
            text = data.decode("utf-8", "replace").strip()
            with self._lock:
                err = self._errors.get(container_id, "")
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
                task = _latest(tasks.get(s["ID"], []))
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
