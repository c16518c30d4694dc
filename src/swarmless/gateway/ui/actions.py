"""What the dashboard's buttons do: deploy, scale, remove, invoke, redrive.

Each does what the admin route of the same name does, through the same objects (the
dispatcher, the gateway's reconcilers, the store and the async runner), and raises the same
errors; the dashboard's routes check the session and the CSRF token before calling them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml

from swarmless.dispatch.dispatcher import Request, Response
from swarmless.exceptions import (
    InvalidArgument,
    InvocationNotFound,
    SpecError,
    SwarmlessError,
)
from swarmless.gateway.rollout import check_name, pin
from swarmless.spec import FunctionSpec

if TYPE_CHECKING:
    from swarmless.gateway.ui.context import DashboardGateway

__all__ = ["Answer", "deploy", "invoke", "parse_spec", "redrive", "remove", "scale"]

log = logging.getLogger("swarmless.gateway")
#: Longest spec text the deploy form takes.
SPEC_LIMIT = 64 * 1024
#: The part of a function's answer the page shows.
SHOWN_LIMIT = 64 * 1024
#: Most containers the scale form pins a function to.
MAX_PIN = 1000
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


def parse_spec(text: str) -> FunctionSpec:
    """A spec from the deploy form: one function's fields as YAML or JSON, or a
    ``swarmless.yml`` with one function under ``functions:``."""
    if len(text) > SPEC_LIMIT:
        raise SpecError({"spec": f"is {len(text)} characters; {SPEC_LIMIT} at most"})
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError({"spec": f"is not valid YAML or JSON: {e}"}) from None
    if not isinstance(doc, Mapping):
        raise SpecError({"spec": "must be a mapping of fields (name: ..., image: ..., ...)"})
    functions = doc.get("functions")
    if isinstance(functions, Mapping) and set(doc) <= {"functions", "settings"}:
        if len(functions) != 1:
            raise SpecError({"functions": f"deploy one at a time; found {len(functions)}"})
        ((name, body),) = functions.items()
        if not isinstance(body, Mapping):
            raise SpecError({str(name): "must be a mapping of fields"})
        doc = {**body, "name": body.get("name", name)}
    if doc.get("build") is not None:
        raise SpecError({"build": "the dashboard deploys images: build it first, then name it"})
    return FunctionSpec.from_dict(doc)


async def deploy(gw: DashboardGateway, spec: FunctionSpec) -> tuple[int, bool]:
    """Deploy (or update) ``spec``: (its version, whether it is new)."""
    d = gw.dispatcher
    assert d is not None
    existed = spec.name in d.functions
    # As the API's deploy: a name not taken, and what the image holds pinned (image_id).
    check_name(spec, d.functions[spec.name][0] if existed else None)
    spec = await pin(spec, gw.backend)
    version = await d.deploy(spec)
    if spec.docker == "host-socket":
        log.warning(
            "function %r has docker: host-socket: its containers get the engine's socket, "
            "which is root on this host; docker: scoped is the safe choice",
            spec.name,
        )
    if spec.name in d.pools:
        gw.start_reconciler(spec.name)
    return version, not existed


def scale(gw: DashboardGateway, name: str, value: str) -> int | None:
    """Pin warm function ``name`` to ``value`` containers ('' or 'auto' unpins)."""
    assert gw.dispatcher is not None
    spec, _ = gw.dispatcher.get(name)
    rec = gw.reconcilers.get(name)
    if rec is None:
        raise InvalidArgument(f"function {name!r} is {spec.mode}: only warm functions scale")
    value = value.strip().lower()
    n: int | None = None
    if value not in ("", "auto"):
        if not value.isascii() or not value.isdigit() or int(value) > MAX_PIN:
            raise InvalidArgument(
                f"containers must be a whole number from 0 to {MAX_PIN}, or auto; got {value!r}"
            )
        n = int(value)
    rec.pin(n)
    return n


async def remove(gw: DashboardGateway, name: str) -> None:
    """Remove function ``name`` and its containers."""
    assert gw.dispatcher is not None
    await gw.dispatcher.remove(name)
    gw.stop_reconciler(name)


@dataclasses.dataclass(frozen=True)
class Answer:
    """What a function answered to a call made from the dashboard (or why it failed)."""

    call_id: str | None
    status: int
    content_type: str
    body: str
    truncated: bool
    error: str | None = None

    @classmethod
    def of(cls, response: Response) -> Answer:
        ctype = next((v for k, v in response.headers if k.lower() == "content-type"), "")
        shown = response.body[:SHOWN_LIMIT]
        text = shown.decode("utf-8", "replace")
        if "json" in ctype:
            try:
                text = json.dumps(json.loads(response.body), indent=2, ensure_ascii=False)
            except ValueError:
                pass
            else:
                shown = response.body
        return cls(
            call_id=response.call_id,
            status=response.status,
            content_type=ctype,
            body=text[:SHOWN_LIMIT],
            truncated=len(response.body) > len(shown) or len(text) > SHOWN_LIMIT,
        )


async def invoke(
    gw: DashboardGateway,
    name: str,
    form: Mapping[str, str],
    scope: Mapping[str, Any],
) -> Answer:
    """Call ``name`` once with the form's method, path, content type and body."""
    assert gw.dispatcher is not None
    method = form.get("method", "POST").upper()
    if method not in _METHODS:
        raise InvalidArgument(f"method must be one of {', '.join(sorted(_METHODS))}")
    path = form.get("path", "")
    if path and not path.startswith("/"):
        path = "/" + path
    path, _, query = path.partition("?")
    ctype = form.get("content_type", "").strip() or "text/plain; charset=utf-8"
    if any(ord(c) < 0x20 for c in ctype + path + query):
        raise InvalidArgument("the path and content type may not hold control characters")
    body = form.get("body", "").encode()
    client = scope.get("client") or ("127.0.0.1", 0)
    server = scope.get("server") or ("127.0.0.1", gw.settings.port)
    request = Request(
        method=method,
        path=path,
        query=query,
        headers=[("content-type", ctype)],
        body=body,
        remote_addr=str(client[0]),
        remote_port=int(client[1] or 0),
        server_name=str(server[0]),
        server_port=int(server[1] or 0),
        scheme=str(scope.get("scheme") or "http"),
    )
    try:
        response = await gw.dispatcher.invoke(name, request)
    except SwarmlessError as e:
        return Answer(
            call_id=e.invocation,
            status=e.status_code,
            content_type="",
            body="",
            truncated=False,
            error=e.message,
        )
    return Answer.of(response)


async def redrive(gw: DashboardGateway, call_id: str) -> None:
    """Queue a dead (or failed) async call again, with fresh retries."""
    assert gw.store is not None
    rec = await gw.store.get_invocation(call_id)
    if rec is None:
        raise InvocationNotFound(call_id)
    if rec.kind != "async" or rec.status not in ("dead", "failed", "timeout"):
        raise InvalidArgument(
            f"only a dead or failed async call can be redriven; {call_id} is a {rec.kind} "
            f"call that is {rec.status}"
        )
    if gw.runner is None:
        raise InvalidArgument("this gateway runs no async calls (it is not the active one)")
    if not await gw.store.redrive(call_id):
        raise InvalidArgument(f"call {call_id} is not in the queue any more")
    gw.runner.wake_up()
