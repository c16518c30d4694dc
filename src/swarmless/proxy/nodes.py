"""``GET /nodes`` through the scoped Docker API, and where a child may run (pure).

A function that places its children (``examples/self-scaling-db``) first asks which nodes
there are. The scoped API answers ``GET /nodes`` itself, never the engine's own answer:

- on a Swarm, the cluster's nodes, each with only ``ID``, ``Description.Hostname``,
  ``Status.State``, ``Status.Addr``, ``Spec.Availability`` and ``Spec.Role`` (no TLS
  material, engine labels, plugins or resources);
- on a single engine, one node: the engine (``Hostname`` its name, ``State`` ready, ``Role``
  manager), so the same code runs on both.

A child is placed by classic Swarm's Env entries ``constraint:node==HOSTNAME`` and
``constraint:node!=HOSTNAME`` (consumed by :func:`swarmless.proxy.create.placement`, the
verdict's ``placement``); on a Swarm they become service constraints on
``node.hostname``, on a single engine ``==`` must name the engine and ``!=`` must not.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from swarmless.proxy.http import ClientSide
from swarmless.proxy.rules import BadValue, parse_json, query_params, strings

__all__ = [
    "constraints",
    "engine_node",
    "filtered",
    "node_row",
    "reply",
    "single_engine_placement",
]

_FILTERS = ("id", "name", "role")


def node_row(node: Mapping[str, Any]) -> dict[str, Any]:
    """A Swarm node as the scoped API shows it: six fields, nothing else."""
    spec = node.get("Spec") or {}
    status = node.get("Status") or {}
    return {
        "ID": str(node.get("ID") or ""),
        "Description": {"Hostname": str((node.get("Description") or {}).get("Hostname") or "")},
        "Status": {"State": str(status.get("State") or ""), "Addr": str(status.get("Addr") or "")},
        "Spec": {
            "Availability": str(spec.get("Availability") or ""),
            "Role": str(spec.get("Role") or ""),
        },
    }


def engine_node(info: Mapping[str, Any], addr: str) -> dict[str, Any]:
    """The one node of a single engine (from its ``/info``), shaped as :func:`node_row`."""
    return node_row(
        {
            "ID": info.get("ID") or info.get("Name") or "engine",
            "Description": {"Hostname": info.get("Name") or "engine"},
            "Status": {"State": "ready", "Addr": addr},
            "Spec": {"Availability": "active", "Role": "manager"},
        }
    )


def filtered(rows: Iterable[dict[str, Any]], query: str) -> list[dict[str, Any]]:
    """``rows`` that pass the request's ``filters`` (``id``, ``name``: the hostname,
    ``role``); any other filter is refused (400), not ignored."""
    raw = dict(query_params(query, allowed=("filters",))).get("filters")
    filters = parse_json(raw.encode(), "filters") if raw else None
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        raise BadValue("query", "filters must be a JSON object")
    wanted: dict[str, list[str]] = {}
    for key, value in filters.items():
        if key not in _FILTERS:
            raise BadValue("query", f"nodes filter {key!r}: only {', '.join(_FILTERS)}")
        if isinstance(value, dict):
            value = [k for k, on in value.items() if on is True]
        wanted[key] = strings(value, f"filters.{key}")
    out = []
    for row in rows:
        facts = {
            "id": row["ID"],
            "name": row["Description"]["Hostname"],
            "role": row["Spec"]["Role"],
        }
        if all(
            any(facts[k] == v or (k == "id" and facts[k].startswith(v)) for v in values)
            for k, values in wanted.items()
        ):
            out.append(row)
    return out


def constraints(placement: Sequence[tuple[str, str]]) -> list[str]:
    """A child's placement as Swarm service constraints."""
    return [f"node.hostname{op}{host}" for op, host in placement]


def single_engine_placement(placement: Sequence[tuple[str, str]], hostname: str) -> str | None:
    """Why a child with ``placement`` cannot run on the single engine ``hostname``; None
    when it can."""
    for op, host in placement:
        if (op == "==") != (host == hostname):
            return (
                f"constraint:node{op}{host}: this gateway runs children on one engine, "
                f"node {hostname!r}"
            )
    return None


async def reply(client: ClientSide, status: int, body: Any = None) -> bool:
    """A whole JSON answer of the proxy's own on a kept-alive connection (204: none)."""
    data = b"" if body is None else json.dumps(body).encode()
    headers = [(b"content-length", str(len(data)).encode())]
    if data:
        headers.append((b"content-type", b"application/json"))
    if status == 204:
        headers = []
    await client.start(status, headers)
    if data:
        await client.data(data)
    await client.end()
    return True
