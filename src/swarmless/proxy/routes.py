"""Which Engine API endpoint a request path is (pure): a :class:`Route`, or a refusal.

Paths are compared as sent: percent-escapes, dot segments, empty segments and characters
outside names are refused rather than decoded, so the proxy and the engine cannot read
one path two ways.
"""

from __future__ import annotations

import re

from swarmless.proxy.rules import MIN_API, Route, Verdict, refuse

__all__ = ["route"]


_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@+-]*$")
_VERSION = re.compile(r"^v(\d+)\.(\d+)$")
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SECTIONS = {
    "build": "build",
    "session": "build",
    "grpc": "build",
    "swarm": "swarm",
    "services": "services",
    "nodes": "nodes",
    "tasks": "tasks",
    "secrets": "secrets",
    "configs": "configs",
    "plugins": "plugins",
    "volumes": "volumes",
    "networks": "networks",
    "system": "system",
    "info": "info",
    "auth": "auth",
    "commit": "commit",
    "distribution": "distribution",
    "images": "images",
}
#: (method, action) on /containers/{ref}/{action}: the endpoint name.
_CONTAINER_ACTIONS = {
    ("GET", "json"): "inspect",
    ("GET", "logs"): "logs",
    ("GET", "top"): "top",
    ("GET", "stats"): "stats",
    ("GET", "changes"): "changes",
    ("GET", "export"): "export",
    ("GET", "archive"): "archive",
    ("HEAD", "archive"): "archive",
    ("PUT", "archive"): "archive-put",
    ("POST", "start"): "start",
    ("POST", "stop"): "stop",
    ("POST", "restart"): "restart",
    ("POST", "kill"): "kill",
    ("POST", "wait"): "wait",
    ("POST", "pause"): "pause",
    ("POST", "unpause"): "unpause",
    ("POST", "resize"): "resize",
    ("POST", "attach"): "attach",
    ("POST", "rename"): "rename",
    ("POST", "exec"): "exec-create",
}


def route(method: str, path: str) -> Route | Verdict:
    """Which endpoint ``path`` is; a refusal for paths that are malformed or never allowed.

    Paths are compared as sent: percent-escapes, dot segments, empty segments and
    characters outside names are refused rather than decoded, so the proxy and the
    engine cannot read one path two ways.
    """
    if not path.startswith("/") or path == "/":
        return refuse("path", f"path {path[:80]!r} is not an engine API path")
    parts = path[1:].split("/")
    if any(not _SEGMENT.match(p) or p in (".", "..") for p in parts):
        return refuse(
            "path", f"path {path[:120]!r} has encoded, dot or empty segments or odd characters"
        )
    version = ""
    m = _VERSION.match(parts[0])
    if m:
        if (int(m[1]), int(m[2])) < MIN_API:
            return refuse("api-version", f"API {parts[0]} is older than v{MIN_API[0]}.{MIN_API[1]}")
        version, parts = parts[0], parts[1:]
        if not parts:
            return refuse("path", "no endpoint after the version")
    head, rest = parts[0], parts[1:]
    if head == "_ping" and not rest and method in ("GET", "HEAD"):
        return Route(endpoint="ping", version=version)
    if head == "version" and not rest and method == "GET":
        return Route(endpoint="version", version=version)
    if head == "events" and not rest and method == "GET":
        return Route(endpoint="events", version=version)
    if head == "nodes" and not rest and method == "GET":
        return Route(endpoint="nodes", version=version)
    if head == "containers":
        return _container_route(method, rest, version)
    if head == "exec" and len(rest) == 2 and _REF.match(rest[0]):
        endpoint = {("POST", "start"): "exec-start", ("POST", "resize"): "exec-resize"}.get(
            (method, rest[1])
        ) or ("exec-inspect" if (method, rest[1]) == ("GET", "json") else None)
        if endpoint:
            return Route(endpoint=endpoint, version=version, ref=rest[0], action=rest[1])
    if head == "images":
        if rest == ["create"] and method == "POST":
            return Route(endpoint="pull", version=version)
        if len(rest) >= 2 and rest[-1] == "json" and method == "GET":
            return Route(endpoint="image-inspect", version=version, ref="/".join(rest[:-1]))
    if head == "exec":
        return refuse("exec", f"{method} {path} is not an exec route of your children")
    rule = _SECTIONS.get(head, "endpoint")
    return refuse(rule, f"{method} /{head} is not part of the scoped API")


def _container_route(method: str, rest: list[str], version: str) -> Route | Verdict:
    if rest == ["create"] and method == "POST":
        return Route(endpoint="create", version=version)
    if rest == ["json"] and method == "GET":
        return Route(endpoint="list", version=version)
    if rest == ["prune"]:
        return refuse("prune", "pruning would remove containers that are not yours")
    if not rest or not _REF.match(rest[0]):
        return refuse("endpoint", "no container named")
    ref = rest[0]
    if len(rest) == 1 and method == "DELETE":
        return Route(endpoint="remove", version=version, ref=ref)
    if len(rest) == 2:
        if rest[1] == "update":
            return refuse("update", "changing a container's resources after create")
        endpoint = _CONTAINER_ACTIONS.get((method, rest[1]))
        if endpoint:
            return Route(endpoint=endpoint, version=version, ref=ref, action=rest[1])
    return refuse("endpoint", f"{method} /containers/{'/'.join(rest)} is not in the scoped API")
