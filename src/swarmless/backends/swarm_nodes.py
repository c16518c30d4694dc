"""The nodes of a Swarm and what runs on them, for ``swarmless doctor`` and ``ls --nodes``;
and the manager the swarm backend drives (:func:`manager_runtime_ip`)."""

from __future__ import annotations

import socket
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from typing import Any

import docker

from swarmless.engine import LABEL_FUNCTION, LABEL_MANAGED, engine_address, translate
from swarmless.exceptions import SwarmlessError

__all__ = ["NodeInfo", "list_nodes", "manager_runtime_ip", "placement"]


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


def manager_runtime_ip(client: docker.DockerClient, docker_host: str | None) -> str:
    """The address the Swarm's containers reach this gateway at; SwarmlessError unless
    ``client`` (connected to ``docker_host``) talks to a Swarm manager."""
    address = engine_address(docker_host)
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
        return _route_to(parts.hostname)
    # On the manager itself: its Swarm address is reachable from every node.
    return str(swarm.get("NodeAddr") or "127.0.0.1")


def _route_to(host: str) -> str:
    """The local address this machine uses to reach ``host`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(host), 9))
        return str(s.getsockname()[0])
