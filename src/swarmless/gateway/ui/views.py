"""What the dashboard reads from a running gateway, through the calls the admin API makes.

Functions and their containers come from the dispatcher (``functions``, the gateway's
``snapshot``) and the reconcilers (``describe``); records and logs from the store, always
with a limit; schedules from the scheduler; the cluster from the backend. Nothing here
changes state (that is :mod:`swarmless.gateway.ui.actions`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

import docker

from swarmless.backends.base import EngineBackend
from swarmless.exceptions import SwarmlessError
from swarmless.gateway.ui.stats import RECORD_LIMIT, FunctionStats, container_states
from swarmless.records import InvocationRecord

if TYPE_CHECKING:
    from swarmless.gateway.ui.context import DashboardGateway

__all__ = [
    "call_tree",
    "cluster",
    "function_rows",
    "is_ready",
    "last_hour",
    "waterfall",
]

log = logging.getLogger("swarmless.gateway")
#: A call tree shows at most this many calls (and ancestors up to this depth).
TREE_LIMIT = 100
TREE_DEPTH = 8


def is_ready(gw: DashboardGateway) -> bool:
    """Whether this gateway serves (it is the active one, started)."""
    return gw.dispatcher is not None and gw.store is not None


async def last_hour(gw: DashboardGateway) -> list[InvocationRecord]:
    """The newest records (at most :data:`RECORD_LIMIT`), what the numbers are made of."""
    assert gw.store is not None
    return await gw.store.list_invocations(limit=RECORD_LIMIT)


def function_rows(gw: DashboardGateway, stats: dict[str, FunctionStats]) -> list[dict[str, Any]]:
    """One row per deployed function: spec, containers by state, scaling, numbers."""
    assert gw.dispatcher is not None
    snapshot = gw.snapshot()
    rows = []
    for name, (spec, version) in sorted(gw.dispatcher.functions.items()):
        counts = snapshot.get(name, {})
        rec = gw.reconcilers.get(name)
        scale = rec.describe() if rec is not None else {}
        scale = {"pinned": None, "desired": None, "reason": None, **scale}
        rows.append(
            {
                "name": name,
                "image": spec.image or "",
                "mode": spec.mode,
                "version": version,
                "private": spec.private,
                "schedule": spec.schedule,
                "spec": spec,
                "states": container_states(counts),
                "queued": counts.get("queued", 0) + counts.get("async_queued", 0),
                "in_flight": counts.get("in_flight", 0),
                "scale": scale,
                "stats": stats.get(name, FunctionStats()),
            }
        )
    return rows


def waterfall(rec: InvocationRecord) -> list[dict[str, Any]]:
    """The phases of one call for its timing bar: queued (waiting for a container), init
    (starting one, when cold), run; each with its start offset and length, ms."""
    spans: list[tuple[str, float, float]] = []
    at = 0.0
    for name, ms in (("queued", rec.wait_ms), ("init", rec.init_ms), ("run", rec.run_ms)):
        if ms is None:
            continue
        spans.append((name, at, float(ms)))
        at += float(ms)
    total = at or 1.0
    return [
        {
            "name": name,
            "start": start,
            "ms": ms,
            "x": round(100 * start / total, 3),
            "w": round(max(0.4, 100 * ms / total), 3),
        }
        for name, start, ms in spans
    ]


async def call_tree(gw: DashboardGateway, rec: InvocationRecord) -> dict[str, Any]:
    """The calls above ``rec`` (its parent, theirs, ...) and below it, as nested nodes:
    ``{"rec": ..., "children": [...]}``; bounded in depth and in calls."""
    store = gw.store
    assert store is not None
    ancestors: list[InvocationRecord] = []
    parent = rec.parent
    while parent and len(ancestors) < TREE_DEPTH:
        found = await store.get_invocation(parent)
        if found is None:
            break
        ancestors.insert(0, found)
        parent = found.parent
    budget = TREE_LIMIT

    async def below(r: InvocationRecord, depth: int) -> dict[str, Any]:
        nonlocal budget
        node: dict[str, Any] = {"rec": r, "children": [], "more": False}
        if depth >= TREE_DEPTH or budget <= 0:
            return node
        kids = await store.list_invocations(parent=r.id, limit=budget + 1)
        node["more"] = len(kids) > budget
        kids = list(reversed(kids[:budget]))  # oldest first
        budget -= len(kids)
        for k in kids:
            node["children"].append(await below(k, depth + 1))
        return node

    return {"ancestors": ancestors, "root": await below(rec, 0)}


async def cluster(gw: DashboardGateway) -> dict[str, Any]:
    """The engine or the Swarm's nodes, this gateway's containers per node, the replicas."""
    backend = gw.backend
    out: dict[str, Any] = {
        "backend": gw.settings.backend,
        "nodes": [],
        "containers": [],
        "error": None,
        "replica": None,
    }
    replicas = gw.replicas
    if replicas is not None:
        out["replica"] = {
            "role": replicas.role,
            "me": replicas.me,
            "active": replicas.leader_url,
            "lease": replicas.lease,
            "ttl": replicas.ttl,
        }
    try:
        found = await backend.list_containers()
        out["containers"] = sorted(found, key=lambda c: (c.function, c.kind, c.id))[:500]
        if isinstance(backend, EngineBackend):
            out["nodes"] = await asyncio.to_thread(_nodes, backend, gw.settings.backend)
    except (SwarmlessError, docker.errors.DockerException) as e:
        out["error"] = str(e)
    if out["nodes"] and gw.settings.backend != "swarm":
        per_function = Counter(c.function for c in out["containers"] if c.status == "running")
        out["nodes"][0]["functions"] = dict(sorted(per_function.items()))
    return out


def _nodes(backend: EngineBackend, kind: str) -> list[dict[str, Any]]:
    """The engine as one node, or the Swarm's nodes with their running containers."""
    client = backend.client
    if kind == "swarm":
        from swarmless.backends.swarm_nodes import list_nodes, placement

        where = placement(client)
        return [
            {
                "hostname": n.hostname,
                "role": n.role + (" (leader)" if n.leader else ""),
                "state": n.state,
                "availability": n.availability,
                "addr": n.addr,
                "functions": dict(sorted(where.get(n.hostname, Counter()).items())),
            }
            for n in list_nodes(client)
        ]
    info = client.info()
    return [
        {
            "hostname": str(info.get("Name", "")),
            "role": "engine",
            "state": "ready",
            "availability": f"Docker {info.get('ServerVersion', '?')}",
            "addr": str(info.get("OperatingSystem", "")),
            "functions": {},
        }
    ]
