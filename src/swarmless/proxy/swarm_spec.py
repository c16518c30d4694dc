"""A child on a Swarm, both ways (pure): a checked create as a service, a service as a
container.

:func:`task_spec` turns the create body the policy checked and rebuilt
(:func:`swarmless.proxy.create.check_create`: limits set, labels forced, network the
caller's) into the pieces of a one-replica service that is created with 0 replicas
(``docker create``) and scaled to 1 by ``start``, restart condition ``none``. Every field
with a Swarm equivalent is carried over; a field that has none and holds a value is
refused (rule ``swarm``), never dropped: TTY, stdin, healthchecks, ``HostConfig.Tmpfs``
(use ``Mounts`` of type tmpfs), security options, CPU sets and shares, ...

:class:`Child` is one child service and its newest task, read back as a container: its
state (``created`` until its task runs, ``running``, ``exited`` once the task ended, was
killed, or its node went down), exit code, node and address on the function network;
:func:`inspect_shape` and :func:`list_row` are what ``GET /containers/{id}/json`` and
``GET /containers/json`` answer.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import docker.types

from swarmless.labels import LABEL_KIND, LABEL_PARENT
from swarmless.proxy.rules import Refused, is_zero

__all__ = [
    "LABEL_AUTO_REMOVE",
    "LABEL_STARTED",
    "LABEL_STATE",
    "LOST",
    "NOT_RUN",
    "Child",
    "inspect_shape",
    "list_row",
    "task_spec",
]

#: A child service's life as the proxy set it: ``created``, ``started``, ``killed``.
LABEL_STATE = "swarmless.child-state"
#: When ``start`` scaled a child to 1 (epoch ms): when it started, for its record.
LABEL_STARTED = "swarmless.child-started"
#: ``true`` on a child created with ``HostConfig.AutoRemove``: removed once it ended.
LABEL_AUTO_REMOVE = "swarmless.child-auto-remove"
#: The exit status of a child killed, or lost with its node.
LOST = 137
#: The exit status of a child Swarm could not run (no such image, no node fits, ...).
NOT_RUN = 125
#: A child's stop grace: ``kill`` and ``stop`` end it at once (Swarm sends SIGTERM, then
#: SIGKILL after this many nanoseconds).
STOP_GRACE_NS = 1_000_000
#: Task states after which its container is gone or never ran.
TERMINAL = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})

#: Create fields ignored on a Swarm (no effect on what runs, or the same as Swarm's).
_IGNORED = frozenset(
    {"AttachStdout", "AttachStderr", "ExposedPorts", "ArgsEscaped", "Shell", "StopTimeout"}
)
#: HostConfig fields carried over (or set by the policy and read here).
_HOST_CARRIED = frozenset(
    {
        "Memory",
        "MemorySwap",
        "NanoCpus",
        "PidsLimit",
        "NetworkMode",
        "RestartPolicy",
        "LogConfig",
        "Mounts",
        "Init",
        "CapDrop",
        "ReadonlyRootfs",
        "Dns",
        "DnsOptions",
        "DnsSearch",
        "ExtraHosts",
        "GroupAdd",
        "AutoRemove",
        "ConsoleSize",
    }
)


def _no(field: str, why: str) -> Refused:
    return Refused("swarm", f"{field} is not available to children on a Swarm ({why})")


def task_spec(
    config: Mapping[str, Any],
    *,
    network: str,
    constraints: Sequence[str],
) -> tuple[docker.types.TaskTemplate, dict[str, str]]:
    """The task template of a child made from the checked create body ``config``, placed
    by ``constraints``; and the service's labels."""
    for field, value in config.items():
        if field in _IGNORED or field in ("HostConfig", "NetworkingConfig") or is_zero(value):
            continue
        if field in ("Tty", "OpenStdin", "StdinOnce", "AttachStdin"):
            raise _no(field, "its output is read from the service's log, it takes no input")
        if field in ("Healthcheck", "Domainname", "NetworkDisabled"):
            raise _no(field, "no Swarm equivalent the proxy carries over")
    host: dict[str, Any] = dict(config.get("HostConfig") or {})
    for field, value in host.items():
        if field not in _HOST_CARRIED and not is_zero(value):
            raise _no(f"HostConfig.{field}", "no Swarm equivalent")
    labels = dict(config.get("Labels") or {})
    mode = host.get("NetworkMode") or network
    aliases: list[str] = []
    endpoints = (config.get("NetworkingConfig") or {}).get("EndpointsConfig") or {}
    for settings in endpoints.values():
        aliases += list((settings or {}).get("Aliases") or [])
    dns = None
    if host.get("Dns") or host.get("DnsOptions") or host.get("DnsSearch"):
        dns = docker.types.DNSConfig(
            nameservers=host.get("Dns") or None,
            search=host.get("DnsSearch") or None,
            options=host.get("DnsOptions") or None,
        )
    hosts = None
    if host.get("ExtraHosts"):
        hosts = {}
        for entry in host["ExtraHosts"]:
            name, sep, ip = str(entry).partition(":")
            if not sep or not name or not ip:
                raise Refused("swarm", f"ExtraHosts entry {entry!r} is not NAME:IP")
            hosts[name] = ip
    mounts = [
        docker.types.Mount(
            m["Target"],
            None,
            type="tmpfs",
            read_only=bool(m.get("ReadOnly")),
            tmpfs_size=(m.get("TmpfsOptions") or {}).get("SizeBytes") or None,
            tmpfs_mode=(m.get("TmpfsOptions") or {}).get("Mode") or None,
        )
        for m in host.get("Mounts") or []
    ]
    container = docker.types.ContainerSpec(
        str(config["Image"]),
        command=config.get("Entrypoint") or None,
        args=config.get("Cmd") or None,
        hostname=config.get("Hostname") or None,
        env=list(config.get("Env") or []) or None,
        workdir=config.get("WorkingDir") or None,
        user=config.get("User") or None,
        labels=labels,
        mounts=mounts or None,
        stop_grace_period=STOP_GRACE_NS,
        groups=host.get("GroupAdd") or None,
        read_only=bool(host.get("ReadonlyRootfs")) or None,
        stop_signal=config.get("StopSignal") or None,
        hosts=hosts,
        dns_config=dns,
        init=bool(host.get("Init")) or None,
        cap_drop=host.get("CapDrop") or None,
    )
    resources = docker.types.Resources(
        cpu_limit=int(host.get("NanoCpus") or 0) or None,
        mem_limit=int(host.get("Memory") or 0) or None,
    )
    if host.get("PidsLimit"):
        resources.setdefault("Limits", {})["Pids"] = int(host["PidsLimit"])
    networks = []
    if mode != "none":
        networks = [docker.types.NetworkAttachmentConfig(str(mode), aliases=aliases or None)]
    template = docker.types.TaskTemplate(
        container,
        resources=resources,
        restart_policy=docker.types.RestartPolicy(condition="none"),
        placement=docker.types.Placement(constraints=list(constraints)) if constraints else None,
        networks=networks,
    )
    service_labels = {**labels, LABEL_STATE: "created"}
    if host.get("AutoRemove"):
        service_labels[LABEL_AUTO_REMOVE] = "true"
    return template, service_labels


# -- a child service read back as a container -------------------------------------------


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of a Swarm timestamp (nanoseconds cut to micro)."""
    if not stamp:
        return 0.0
    head, dot, frac = stamp.rstrip("Z").partition(".")
    text = head + (f".{frac[:6]}" if dot else "")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    return moment.replace(tzinfo=datetime.UTC).timestamp()


@dataclasses.dataclass(frozen=True)
class Child:
    """A child service and its newest task (None: not started, or gone), read as a
    container; ``node``: the task's node as :func:`swarmless.proxy.nodes.node_row`."""

    service: Mapping[str, Any]
    task: Mapping[str, Any] | None
    node: Mapping[str, Any] | None = None
    node_down: bool = False

    @property
    def id(self) -> str:
        return str(self.service["ID"])

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.service.get("Spec") or {}).get("Labels") or {})

    @property
    def name(self) -> str:
        return str((self.service.get("Spec") or {}).get("Name") or self.id)

    @property
    def container(self) -> Mapping[str, Any]:
        return ((self.service.get("Spec") or {}).get("TaskTemplate") or {}).get(
            "ContainerSpec"
        ) or {}

    @property
    def started(self) -> bool:
        return self.labels.get(LABEL_STATE) in ("started", "killed")

    @property
    def task_state(self) -> str:
        return str(((self.task or {}).get("Status") or {}).get("State") or "")

    @property
    def ended(self) -> bool:
        """Started, and its task ended (or was killed, or lost with its node)."""
        if not self.started:
            return False
        if self.task is None or self.node_down:
            return self.labels.get(LABEL_STATE) == "killed" or self.node_down
        return self.task_state in TERMINAL

    @property
    def status(self) -> str:
        if self.ended:
            return "exited"
        return "running" if self.task_state == "running" else "created"

    @property
    def exit_code(self) -> int:
        if not self.ended:
            return 0
        code = (((self.task or {}).get("Status") or {}).get("ContainerStatus") or {}).get(
            "ExitCode"
        )
        if isinstance(code, int) and self.task_state not in ("rejected", ""):
            return code
        if self.labels.get(LABEL_STATE) == "killed" or self.node_down:
            return LOST
        return NOT_RUN

    @property
    def error(self) -> str:
        if self.node_down and self.node is not None:
            return f"node {self.node['Description']['Hostname']} went down"
        if not self.ended:
            return ""
        return str(((self.task or {}).get("Status") or {}).get("Err") or "")

    def times(self) -> tuple[float, float]:
        """(started, finished) in epoch seconds; 0 when not yet."""
        try:
            started = int(self.labels.get(LABEL_STARTED, "0")) / 1000 if self.started else 0.0
        except ValueError:
            started = 0.0
        finished = 0.0
        if self.ended:
            finished = _epoch(str(((self.task or {}).get("Status") or {}).get("Timestamp") or ""))
        return started, finished

    def networks(self) -> dict[str, dict[str, Any]]:
        """The task's addresses on its networks, as a container's ``Networks``."""
        out: dict[str, dict[str, Any]] = {}
        for attached in (self.task or {}).get("NetworksAttachments") or []:
            net = attached.get("Network") or {}
            name = str((net.get("Spec") or {}).get("Name") or "")
            if not name or name == "ingress":
                continue
            address = str((attached.get("Addresses") or [""])[0])
            ip, _, prefix = address.partition("/")
            out[name] = {
                "NetworkID": str(net.get("ID") or ""),
                "IPAddress": ip if not self.ended else "",
                "IPPrefixLen": int(prefix) if prefix.isdigit() and not self.ended else 0,
                "Aliases": [self.name],
            }
        return out


def _iso(seconds: float) -> str:
    if not seconds:
        return "0001-01-01T00:00:00Z"
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")


def inspect_shape(child: Child) -> dict[str, Any]:
    """``GET /containers/{id}/json`` of a child on a Swarm."""
    spec = child.container
    resources = (
        ((child.service.get("Spec") or {}).get("TaskTemplate") or {}).get("Resources") or {}
    ).get("Limits") or {}
    started, finished = child.times()
    status = child.status
    argv = [*(spec.get("Command") or []), *(spec.get("Args") or [])]
    node = child.node or {}
    return {
        "Id": child.id,
        "Created": str(child.service.get("CreatedAt") or ""),
        "Path": argv[0] if argv else "",
        "Args": argv[1:],
        "State": {
            "Status": status,
            "Running": status == "running",
            "Paused": False,
            "Restarting": False,
            "OOMKilled": False,
            "Dead": False,
            "Pid": 0,
            "ExitCode": child.exit_code,
            "Error": child.error,
            "StartedAt": _iso(started),
            "FinishedAt": _iso(finished),
        },
        "Image": str(spec.get("Image") or ""),
        "Name": f"/{child.name}",
        "RestartCount": 0,
        "Platform": "linux",
        "Node": {
            "ID": node.get("ID", ""),
            "Name": (node.get("Description") or {}).get("Hostname", ""),
            "Addr": (node.get("Status") or {}).get("Addr", ""),
        },
        "HostConfig": {
            "LogConfig": {"Type": "json-file", "Config": {}},
            "Memory": int(resources.get("MemoryBytes") or 0),
            "NanoCpus": int(resources.get("NanoCPUs") or 0),
            "PidsLimit": int(resources.get("Pids") or 0),
            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
            "AutoRemove": child.labels.get(LABEL_AUTO_REMOVE) == "true",
        },
        "Config": {
            "Hostname": str(spec.get("Hostname") or ""),
            "User": str(spec.get("User") or ""),
            "Tty": False,
            "OpenStdin": False,
            "Env": list(spec.get("Env") or []),
            "Cmd": spec.get("Args"),
            "Entrypoint": spec.get("Command"),
            "Image": str(spec.get("Image") or ""),
            "WorkingDir": str(spec.get("Dir") or ""),
            "Labels": _shown_labels(child.labels),
        },
        "NetworkSettings": {"Networks": child.networks()},
    }


def _shown_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A child's labels as its container carries them (not the proxy's bookkeeping)."""
    hidden = (LABEL_STATE, LABEL_AUTO_REMOVE, LABEL_STARTED)
    return {k: v for k, v in labels.items() if k not in hidden}


def list_row(child: Child) -> dict[str, Any]:
    """One row of ``GET /containers/json``."""
    spec = child.container
    argv = [*(spec.get("Command") or []), *(spec.get("Args") or [])]
    status = child.status
    shown = {"exited": f"Exited ({child.exit_code})", "running": "Up", "created": "Created"}
    return {
        "Id": child.id,
        "Names": [f"/{child.name}"],
        "Image": str(spec.get("Image") or ""),
        "ImageID": "",
        "Command": " ".join(argv),
        "Created": int(_epoch(str(child.service.get("CreatedAt") or ""))),
        "State": status,
        "Status": shown[status],
        "Ports": [],
        "Labels": _shown_labels(child.labels),
        "HostConfig": {"NetworkMode": "default"},
        "NetworkSettings": {"Networks": child.networks()},
        "Mounts": [],
    }


def parent_of(child: Child) -> str:
    return child.labels.get(LABEL_PARENT, "")


def is_child(service: Mapping[str, Any]) -> bool:
    return ((service.get("Spec") or {}).get("Labels") or {}).get(LABEL_KIND) == "child"
