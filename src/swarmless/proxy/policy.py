"""What a function container may ask the Docker Engine, as a pure function of the request.

The scoped Docker API (:mod:`swarmless.proxy.server`) parses each request, looks up the facts
the policy needs (who the caller is, the container the path names, the image allowlist, how
many children the caller has) and asks :func:`check`; only an allowed :class:`Verdict` is
forwarded, and then exactly as the verdict spells it: the path is rebuilt from its parsed
parts (a container reference becomes the full id that was checked), the query re-encoded
and a JSON body re-serialised from what was checked, so the engine never reads anything
the policy did not.

Decisions are taken on the request body as well as the path:

- ``POST /containers/create``: every field of the body is known or zero-valued (unknown
  fields that carry a value are refused, so a new engine field cannot slip through);
  field names are matched case-insensitively (Go's JSON decoder does so), duplicate keys
  are refused; privileged mode, added capabilities, devices, host binds, bind or volume
  mounts, volume drivers, host or foreign network/PID/IPC/UTS/user/cgroup namespaces,
  unconfined security options, sysctls, published ports, links, log drivers, restart
  policies and images off the allowlist are refused; memory, CPUs and PIDs are capped
  (and set when absent) and the ``swarmless.*`` labels are forced.
- Container routes (inspect, logs, wait, kill, remove, attach, exec...) only for the
  caller's own children; ``GET /containers/json`` and ``/events`` are filtered to them.
- ``GET /nodes``: answered by the proxy (the Swarm's nodes, a few fields of each; one
  node on a single engine).
- Everything else (build, swarm, services, node updates, secrets, plugins, volumes, networks,
  prune, commit, update...) is refused.

Every refusal names its rule: ``{"message": "... (rule privileged)"}``.

>>> caller = Caller(container="c" * 64, function="f", network="net")
>>> body = b'{"Image": "busybox", "HostConfig": {"Privileged": true}}'
>>> v = check(ProxyRequest("POST", "/v1.41/containers/create", "", body, caller=caller,
...                        images={"docker.io/library/busybox:latest": ""}))
>>> v.allowed, v.rule
(False, 'privileged')
"""

from __future__ import annotations

import json

from swarmless.labels import LABEL_GATEWAY, LABEL_KIND, LABEL_MANAGED, LABEL_PARENT
from swarmless.proxy.create import check_create, child_name
from swarmless.proxy.routes import route
from swarmless.proxy.rules import (
    MIN_API,
    BadValue,
    Caller,
    NotFound,
    ProxyRequest,
    Refused,
    Route,
    Target,
    Verdict,
    allow,
    allowed_image,
    fields_of,
    is_zero,
    normalize_image,
    parse_json,
    query_params,
    refuse,
    strings,
    to_json,
)

__all__ = [
    "LABEL_GATEWAY",
    "MIN_API",
    "Caller",
    "ProxyRequest",
    "Route",
    "Target",
    "Verdict",
    "check",
    "normalize_image",
    "refuse",
    "route",
]


def _proving(caller: Caller) -> dict[str, str]:
    """The labels that make a container the caller's child: its parent, and the labels
    forced on every child of this gateway (its instance; a test session's)."""
    return {**caller.labels, LABEL_PARENT: caller.container}


def _own(req: ProxyRequest, route: Route) -> Target:
    """The caller's own child the request names. Anything else is "no such container",
    word for word what a container that does not exist gets (no existence oracle)."""
    target = req.target
    labels = target.labels if target is not None else {}
    proving = {**_proving(req.caller), LABEL_KIND: "child", LABEL_MANAGED: "true"}
    if target is None or any(labels.get(k) != v for k, v in proving.items()):
        what = "exec instance" if route.endpoint.startswith("exec-") else "container"
        if route.endpoint == "exec-create":
            what = "container"
        raise NotFound("own-children", f"no such {what}: {route.ref}")
    return target


def _filters(
    query: list[tuple[str, str]], caller: Caller, *, events: bool
) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in query if k != "filters"]
    raw = dict(query).get("filters")
    filters = parse_json(raw.encode(), "filters") if raw else {}
    if filters is None:
        filters = {}
    if not isinstance(filters, dict):
        raise Refused("query", "filters must be a JSON object")
    normal: dict[str, list[str]] = {}
    for key, value in filters.items():
        if isinstance(value, dict):
            value = [k for k, on in value.items() if on is True]
        normal[key] = strings(value, f"filters.{key}")
    own = [f"{k}={v}" for k, v in _proving(caller).items()]
    normal["label"] = [*normal.get("label", []), *own]
    if events:
        normal["type"] = ["container"]
    out.append(("filters", json.dumps(normal, separators=(",", ":"))))
    return out


_NO_BODY = {"stop", "restart", "kill", "wait", "pause", "unpause", "resize", "rename", "attach"}
_LIST_PARAMS = ("all", "limit", "size", "filters", "before", "since", "trunc_cmd")
#: The query parameters each endpoint takes (anything else is refused).
_PARAMS: dict[str, tuple[str, ...]] = {
    "inspect": ("size",),
    "logs": ("follow", "stdout", "stderr", "since", "until", "timestamps", "tail", "details"),
    "top": ("ps_args",),
    "stats": ("stream", "one-shot"),
    "changes": (),
    "export": (),
    "archive": ("path",),
    "archive-put": ("path", "noOverwriteDirNonDir", "copyUIDGID"),
    "start": ("detachKeys",),
    "stop": ("t", "signal"),
    "restart": ("t", "signal"),
    "kill": ("signal",),
    "wait": ("condition",),
    "pause": (),
    "unpause": (),
    "resize": ("h", "w"),
    "attach": ("detachKeys", "logs", "stream", "stdin", "stdout", "stderr"),
    "rename": ("name",),
    "remove": ("v", "force", "link"),
    "exec-create": (),
    "exec-start": (),
    "exec-resize": ("h", "w"),
    "exec-inspect": (),
}


def _decide(req: ProxyRequest, r: Route) -> Verdict:
    endpoint = r.endpoint
    if endpoint in ("ping", "version"):
        return allow(req, r, endpoint.replace("ping", "_ping"), query_params(req.query, allowed=()))
    if endpoint == "create":
        return check_create(req, r)
    if endpoint == "nodes":
        # Answered by the proxy itself (swarmless.proxy.nodes), never by the engine.
        return allow(req, r, "nodes", query_params(req.query, allowed=("filters",)))
    if endpoint in ("list", "events"):
        names = ("since", "until", "filters") if endpoint == "events" else _LIST_PARAMS
        query = _filters(
            query_params(req.query, allowed=names), req.caller, events=endpoint == "events"
        )
        return allow(req, r, "containers/json" if endpoint == "list" else "events", query)
    if endpoint == "pull":
        query = query_params(req.query, allowed=("fromImage", "tag", "platform"))
        params = dict(query)
        ref = params.get("fromImage", "")
        tag = params.get("tag", "")
        allowed_image(f"{ref}:{tag}" if tag and "@" not in ref else ref, req.images)
        return allow(req, r, "images/create", query)
    if endpoint == "image-inspect":
        allowed_image(r.ref, req.images)
        return allow(req, r, f"images/{r.ref}/json", [])
    target = _own(req, r)
    query = query_params(req.query, allowed=_PARAMS[endpoint])
    if endpoint.startswith("exec-"):
        if endpoint == "exec-create":
            return _exec_create(req, r, target, query)
        body = None
        hijack = False
        if endpoint == "exec-start":
            start = fields_of(
                parse_json(req.body, "exec start"), ("Detach", "Tty", "ConsoleSize"), ""
            )
            body = to_json(start)
            # A detached start answers like any request: nothing switches, nothing after
            # it on the connection is a raw stream.
            hijack = start.get("Detach") is not True
            if not isinstance(start.get("Detach", False), bool):
                raise Refused("json", "Detach must be true or false")
        return allow(req, r, f"exec/{r.ref}/{r.action}", query, body, hijack=hijack)
    if endpoint == "rename":
        child_name(dict(query).get("name", ""), req.caller, "name")
    if endpoint == "remove":
        if dict(query).get("link", "") not in ("", "0", "false", "False"):
            raise Refused("links", "removing links")
        return allow(req, r, f"containers/{target.id}", query)
    body = None
    if endpoint == "start":
        if not is_zero(parse_json(req.body, "start")):
            raise Refused("start-config", "a start request carries no configuration")
    elif endpoint == "archive-put":
        body = req.body
    elif endpoint not in _NO_BODY and req.body.strip():
        raise Refused("body", f"{endpoint} takes no body")
    return allow(
        req, r, f"containers/{target.id}/{r.action}", query, body, hijack=endpoint == "attach"
    )


def _exec_create(
    req: ProxyRequest, r: Route, target: Target, query: list[tuple[str, str]]
) -> Verdict:
    fields = (
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "ConsoleSize",
        "DetachKeys",
        "Tty",
        "Env",
        "Cmd",
        "Privileged",
        "User",
        "WorkingDir",
    )
    body = fields_of(parse_json(req.body, "exec"), (*fields, "Container", "Detach"), "exec")
    body.pop("Container", None)  # the Docker SDK repeats the path's container: not forwarded
    if not is_zero(body.get("Privileged")):
        raise Refused("privileged", "a privileged exec is not allowed")
    return allow(req, r, f"containers/{target.id}/exec", query, to_json(body))


def check(request: ProxyRequest) -> Verdict:
    """Allow ``request`` (with the exact request to forward) or refuse it, naming the rule."""
    r = route(request.method, request.path)
    if isinstance(r, Verdict):
        return r
    try:
        return _decide(request, r)
    except NotFound as e:
        return refuse(e.rule, e.reason, status=404)
    except BadValue as e:
        return refuse(e.rule, e.reason, status=400)
    except Refused as e:
        return refuse(e.rule, e.reason)
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        # A shape the checks above did not foresee: refused, never forwarded.
        return refuse("json", f"the request has a value of an unexpected type ({e})")
