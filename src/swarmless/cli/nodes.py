"""The Swarm's nodes as ``swarmless doctor`` and ``swarmless ls --nodes`` show them."""

from __future__ import annotations

from collections import Counter

import docker
from rich.table import Table

from swarmless.backends.swarm_nodes import list_nodes, placement
from swarmless.cli._base import console
from swarmless.config import Settings
from swarmless.engine import connect, translate
from swarmless.exceptions import SwarmlessError

__all__ = ["node_rows", "print_nodes"]


def node_rows(client: docker.DockerClient) -> list[tuple[str, str, bool, str]]:
    """One row per node: hostname, role and state, ready, the functions running there."""
    running = placement(client)
    rows = []
    for n in list_nodes(client):
        role = "manager (leader)" if n.leader else n.role
        here = running.get(n.hostname, Counter())
        fns = ", ".join(f"{name} x{count}" for name, count in sorted(here.items())) or "-"
        ready = n.state == "ready" and n.availability == "active"
        rows.append((n.hostname, f"{role}, {n.state}, {n.availability}, {n.addr}", ready, fns))
    return rows


def print_nodes(settings: Settings) -> None:
    """Print the Swarm's nodes and which functions run on each (from a manager)."""
    client = connect(settings.docker_host, timeout=10)
    try:
        with translate(docker_host=settings.docker_host):
            swarm = client.info().get("Swarm") or {}
        if not swarm.get("ControlAvailable"):
            raise SwarmlessError(
                "this engine is not a Swarm manager: point SWARMLESS_DOCKER_HOST at a manager"
            )
        table = Table(show_header=True, header_style="bold")
        for col in ("node", "role, state", "ready", "functions (containers)"):
            table.add_column(col)
        for host, state, ready, fns in node_rows(client):
            table.add_row(host, state, "[green]yes[/green]" if ready else "[red]no[/red]", fns)
        console.print(table)
    finally:
        client.close()
