"""The gateway's admin routes (Starlette): deploy, inspect, scale and remove functions,
invocation records and logs, async results and redrive, secrets, schedules, API docs.

Every route but the docs needs the admin token. The hot paths (``/function/*``,
``/async-function/*``, the runtime API) are raw ASGI in :mod:`swarmless.gateway.app`.

Bad input gets a 4xx with a JSON body naming the problem (:mod:`swarmless.exceptions`),
never a 500: bodies are read with a limit and parsed here, ids and names are checked before
they reach a header, and a spec the engine could not run (more CPUs or memory than its
host, a network it does not have) is refused at deploy (:mod:`swarmless.gateway.capacity`).
What each route takes and answers is described in :mod:`swarmless.gateway.schemas`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.exceptions import (
    InvalidArgument,
    InvocationNotFound,
    NotFound,
    SpecError,
    SwarmlessError,
    Unauthorized,
)
from swarmless.gateway.asgi import bearer, header_safe
from swarmless.gateway.async_routes import get_result, list_schedules, retry_invocation
from swarmless.gateway.capacity import EngineCapacity, check_deployable
from swarmless.gateway.context import GatewayContext
from swarmless.gateway.docs import docs_page, openapi_schema
from swarmless.gateway.rollout import ROLLOUT_WAIT, check_name, pin, preview, settle
from swarmless.records import STATUSES, InvocationRecord
from swarmless.spec import FunctionSpec

__all__ = ["Admin"]

log = logging.getLogger("swarmless.gateway")
_SECRET_NAME = re.compile(r"[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?")
#: Largest JSON body of an admin route (a function spec is a few KiB).
MAX_JSON = 1024 * 1024
#: Largest secret.
MAX_SECRET = 512 * 1024


def safe_headers(exc: SwarmlessError) -> dict[str, str]:
    """The headers of an error answer: the call id only when it can be a header value."""
    headers = {"x-swarmless-error": "1"}
    if exc.invocation and header_safe(exc.invocation):
        headers["x-call-id"] = exc.invocation
    return headers


Endpoint = Callable[[HTTPRequest], Awaitable[Response]]


def by_method(handlers: dict[str, Endpoint]) -> Endpoint:
    """One endpoint that calls the handler of the request's method (HEAD: GET's); the
    handlers are kept as its ``handlers`` (the API description reads their docstrings)."""

    async def endpoint(request: HTTPRequest) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    endpoint.handlers = handlers  # type: ignore[attr-defined]
    return endpoint


class Admin:
    """The admin routes of one gateway (as a :class:`GatewayContext`: it reads the
    gateway's parts and asks through its methods)."""

    def __init__(self, gw: GatewayContext) -> None:
        self.gw = gw
        self.capacity = EngineCapacity(gw.backend)
        self._openapi: dict[str, Any] | None = None

    def routes(self) -> list[Route]:
        """One route per path (so that a 405 lists every method of the path in Allow)."""
        table: dict[str, dict[str, Endpoint]] = {
            "/openapi.json": {"GET": self.openapi},
            "/docs": {"GET": self.docs},
            "/system/functions": {
                "GET": self.list_functions,
                "POST": self.deploy,
                "PUT": self.deploy,
            },
            "/system/functions/{name}": {
                "GET": self.get_function,
                "PUT": self.update_function,
                "DELETE": self.delete_function,
            },
            "/system/scale/{name}": {"POST": self.scale},
            "/invocations": {"GET": self.list_invocations},
            "/invocations/{call_id}": {"GET": self.get_invocation},
            "/invocations/{call_id}/logs": {"GET": self.get_logs},
            "/invocations/{call_id}/result": {"GET": self.get_result},
            "/invocations/{call_id}/retry": {"POST": self.retry},
            "/system/schedules": {"GET": self.schedules},
            "/system/secrets": {"GET": self.list_secrets},
            "/system/secrets/{name}": {
                "PUT": self.put_secret,
                "POST": self.put_secret,
                "DELETE": self.delete_secret,
            },
        }
        return [
            Route(path, by_method(handlers), methods=list(handlers))
            for path, handlers in table.items()
        ]

    def exception_handlers(self) -> Mapping[Any, Any]:
        return {
            SwarmlessError: self._on_error,
            HTTPException: self._on_http_error,
            Exception: self._on_crash,
        }

    async def _on_error(self, _request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, SwarmlessError)
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=safe_headers(exc))

    async def _on_http_error(self, _request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        body = {"error": "http_error", "message": exc.detail or f"HTTP {exc.status_code}"}
        headers = {**(exc.headers or {}), "x-swarmless-error": "1"}  # a 405's Allow too
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    async def _on_crash(self, request: HTTPRequest, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        body = {"error": "internal", "message": f"{type(exc).__name__}: {exc}"}
        return JSONResponse(body, status_code=500, headers={"x-swarmless-error": "1"})

    def _admin(self, request: HTTPRequest) -> Dispatcher:
        self.gw.check_admin(bearer(request.scope))  # Bearer, or Basic admin:<token>
        assert self.gw.dispatcher is not None
        return self.gw.dispatcher

    def _describe(self, spec: FunctionSpec, version: int) -> dict[str, Any]:
        assert self.gw.dispatcher is not None
        counts = self.gw.snapshot().get(spec.name, {})
        rec = self.gw.reconcilers.get(spec.name)
        return {
            "name": spec.name,
            "version": version,
            "spec": spec.to_dict(),
            "containers": counts,
            # The last plan and the recent ones with actions, each with its reasons.
            "scale": rec.describe() if rec else {"pinned": None, "desired": None, "reason": None},
        }

    async def list_functions(self, request: HTTPRequest) -> Response:
        """List deployed functions with their containers."""
        d = self._admin(request)
        return JSONResponse([self._describe(s, v) for s, v in d.functions.values()])

    async def _body(self, request: HTTPRequest, limit: int, what: str) -> bytes:
        """The request body; InvalidArgument past ``limit`` bytes (read no further)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise InvalidArgument(f"{what} is {declared} bytes; {limit} at most")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise InvalidArgument(f"{what} is over {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _json(self, request: HTTPRequest, what: str) -> Any:
        """The body as JSON; InvalidArgument saying why when it is not."""
        body = await self._body(request, MAX_JSON, what)
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
            raise InvalidArgument(f"{what} must be JSON ({why})") from None

    async def _spec_from(self, request: HTTPRequest, name: str | None = None) -> FunctionSpec:
        data = await self._json(request, "the body (a JSON function spec)")
        if not isinstance(data, dict):
            raise SpecError({"spec": f"must be a JSON object, got {type(data).__name__}"})
        if name is not None and data.setdefault("name", name) != name:
            raise SpecError({"name": f"{data['name']!r} does not match the URL ({name!r})"})
        return FunctionSpec.from_dict(data)

    async def deploy(self, request: HTTPRequest) -> Response:
        """Deploy (or update) a function from a JSON spec.

        A new version (the spec changed, or what its image holds) of a warm function rolls
        out before the answer: ``rollout`` says how (``?wait=S``, default 60, bounds the
        wait). ``?dry_run=true`` checks everything and applies nothing: the answer says
        what would change."""
        d = self._admin(request)
        spec = await self._spec_from(request)
        return await self._deploy(d, spec, request)

    def _wait(self, request: HTTPRequest) -> float:
        raw = request.query_params.get("wait")
        if raw is None:
            return ROLLOUT_WAIT
        try:
            wait = float(raw)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= 600:
            raise InvalidArgument(f"wait must be a number of seconds from 0 to 600, got {raw!r}")
        return wait

    async def _deploy(self, d: Dispatcher, spec: FunctionSpec, request: HTTPRequest) -> Response:
        dry_run = request.query_params.get("dry_run", "").lower()
        if dry_run not in ("", "0", "false", "1", "true"):
            raise InvalidArgument(f"dry_run must be true or false, got {dry_run!r}")
        if dry_run in ("1", "true"):
            return JSONResponse(await preview(spec, d, self.gw.backend, self.capacity))
        wait = self._wait(request)
        await check_deployable(spec, self.capacity)
        current, before = d.functions.get(spec.name, (None, None))
        check_name(spec, current)
        spec = await pin(spec, self.gw.backend)
        version = await d.deploy(spec)
        if spec.docker == "host-socket":
            log.warning(
                "function %r has docker: host-socket: its containers get the engine's socket, "
                "which is root on this host; docker: scoped is the safe choice",
                spec.name,
            )
        if spec.name in d.pools:
            self.gw.start_reconciler(spec.name)
        body = self._describe(spec, version)
        body["previous_version"] = before
        rollout = await settle(d, spec.name, version, wait if before != version else 0.0)
        body["rollout"] = rollout.to_dict()
        return JSONResponse(body, status_code=200 if current is not None else 201)

    async def update_function(self, request: HTTPRequest) -> Response:
        """Update a deployed function."""
        d = self._admin(request)
        name = request.path_params["name"]
        d.get(name)
        return await self._deploy(d, await self._spec_from(request, name), request)

    async def get_function(self, request: HTTPRequest) -> Response:
        """A function's spec, version and containers."""
        d = self._admin(request)
        spec, version = d.get(request.path_params["name"])
        return JSONResponse(self._describe(spec, version))

    async def delete_function(self, request: HTTPRequest) -> Response:
        """Remove a function and its containers."""
        d = self._admin(request)
        name = request.path_params["name"]
        await d.remove(name)
        self.gw.stop_reconciler(name)
        return Response(status_code=204)

    async def scale(self, request: HTTPRequest) -> Response:
        """Pin a warm function to N containers (``{"replicas": N}``; null unpins)."""
        d = self._admin(request)
        name = request.path_params["name"]
        spec, version = d.get(name)
        rec = self.gw.reconcilers.get(name)
        if rec is None:
            raise InvalidArgument(f"function {name!r} is {spec.mode}: only warm functions scale")
        data = await self._json(request, 'the body ({"replicas": N})')
        if not isinstance(data, dict) or "replicas" not in data:
            raise InvalidArgument(f'the body must be {{"replicas": N}} (null unpins), got {data!r}')
        n = data["replicas"]
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 1000):
            raise InvalidArgument(
                f"replicas must be a whole number from 0 to 1000 or null, got {n!r}"
            )
        if n is not None and n > spec.max_containers:
            raise InvalidArgument(
                f"replicas {n} is over the max_containers of function {name!r} "
                f"({spec.max_containers}); raise max_containers first"
            )
        rec.pin(n)
        return JSONResponse(self._describe(spec, version))

    async def list_invocations(self, request: HTTPRequest) -> Response:
        """Invocation records, newest first (``function``, ``status``, ``limit``)."""
        self._admin(request)
        assert self.gw.store is not None
        q = request.query_params
        status = q.get("status")
        if status is not None and status not in STATUSES:
            raise InvalidArgument(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise InvalidArgument(f"limit must be a number, got {q.get('limit')!r}") from None
        if not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be between 1 and 10000, got {limit}")
        records = await self.gw.store.list_invocations(
            function=q.get("function"), status=status, parent=q.get("parent"), limit=limit
        )
        return JSONResponse(await self._shown(records))

    async def _shown(self, records: list[InvocationRecord]) -> list[dict[str, Any]]:
        """Records as the API shows them: with how the child containers each call started
        ended (``detached``); a child swarmless had to kill makes the call's ``error``."""
        assert self.gw.store is not None
        ended = await self.gw.store.children_of(r.id for r in records)
        out = []
        for rec in records:
            body = rec.to_dict()
            children = ended.get(rec.id, [])
            body["detached"] = [c.to_dict() for c in children]
            killed = [c.error for c in children if c.killed and c.error]
            if killed:
                body["error"] = "\n".join([*([rec.error] if rec.error else []), *killed])
            out.append(body)
        return out

    async def _record(self, request: HTTPRequest) -> InvocationRecord:
        """The record named by the route's ``call_id`` (admin only); 404 when unknown."""
        self._admin(request)
        assert self.gw.store is not None
        call_id = request.path_params["call_id"]
        rec = await self.gw.store.get_invocation(call_id)
        if rec is None:
            raise InvocationNotFound(call_id)
        return rec

    async def get_invocation(self, request: HTTPRequest) -> Response:
        """One invocation record, with the ids of the calls it made and how the child
        containers it started ended."""
        rec = await self._record(request)
        assert self.gw.store is not None
        children = await self.gw.store.list_invocations(parent=rec.id, limit=1000)
        (body,) = await self._shown([rec])
        body["children"] = [c.id for c in children]
        return JSONResponse(body)

    async def get_logs(self, request: HTTPRequest) -> Response:
        """What one invocation printed: ``{"stdout": ..., "stderr": ...}``."""
        call_id = (await self._record(request)).id
        assert self.gw.store is not None
        logs = await self.gw.store.get_logs(call_id)
        stdout, stderr = logs or (b"", b"")
        return JSONResponse(
            {
                "id": call_id,
                "stdout": stdout.decode("utf-8", "replace"),
                "stderr": stderr.decode("utf-8", "replace"),
            }
        )

    async def get_result(self, request: HTTPRequest) -> Response:
        """What a finished async call answered (``?wait=S`` waits for it). A function's
        container may read the calls its function made (its caller token)."""
        token = bearer(request.scope)  # Bearer, or Basic admin:<token> as every admin route
        try:
            self.gw.check_admin(token)
        except Unauthorized:
            await self._own_child(token, request.path_params["call_id"])
        return await get_result(self.gw, request)

    async def _own_child(self, token: str | None, call_id: str) -> None:
        """Unauthorized unless ``token`` is a function container's and ``call_id`` a call
        its function made (the call's parent is a call of that function)."""
        assert self.gw.dispatcher is not None
        assert self.gw.store is not None
        grant = self.gw.callers.caller(token, self.gw.dispatcher)
        if grant is None:
            raise Unauthorized("this route needs the admin token: Authorization: Bearer <token>")
        rec = await self.gw.store.get_invocation(call_id)
        if rec is not None and rec.parent:
            # The call this container serves now (its record may not be written yet)...
            if self.gw.callers.parent(grant, rec.parent, self.gw.dispatcher) == rec.parent:
                return
            # ...or an earlier call of the same function.
            parent = await self.gw.store.get_invocation(rec.parent)
            if parent is not None and parent.function == grant.function:
                return
        raise Unauthorized(
            f"function {grant.function!r} may read only the results of the calls it made; "
            f"call {call_id} is not one of them"
        )

    async def retry(self, request: HTTPRequest) -> Response:
        """Queue a dead or failed async call again (the dead letter's redrive)."""
        self._admin(request)
        return await retry_invocation(self.gw, request)

    async def list_secrets(self, request: HTTPRequest) -> Response:
        """Names of the secrets functions can mount (never their values)."""
        self._admin(request)
        return JSONResponse(await self.gw.backend.list_secrets())

    async def put_secret(self, request: HTTPRequest) -> Response:
        """Create or replace a secret; the body is its value."""
        self._admin(request)
        name = request.path_params["name"]
        if not _SECRET_NAME.fullmatch(name):
            raise InvalidArgument(
                f"secret name {name!r}: lower-case letters, digits, '-', '_' and '.' only"
            )
        data = await self._body(request, MAX_SECRET, f"secret {name!r}")
        await self.gw.backend.put_secret(name, data)
        return Response(status_code=204)

    async def delete_secret(self, request: HTTPRequest) -> Response:
        """Remove a secret."""
        self._admin(request)
        name = request.path_params["name"]
        if not await self.gw.backend.delete_secret(name):
            raise NotFound(f"no secret named {name!r}")
        return Response(status_code=204)

    async def schedules(self, request: HTTPRequest) -> Response:
        """Scheduled functions and their next fire times."""
        self._admin(request)
        return await list_schedules(self.gw, request)

    async def openapi(self, _request: HTTPRequest) -> Response:
        """The OpenAPI description of the gateway (admin routes from their docstrings)."""
        return JSONResponse(self.schema())

    async def docs(self, _request: HTTPRequest) -> Response:
        """A self-contained page listing the API (no CDN needed)."""
        return HTMLResponse(docs_page(self.schema()))

    def schema(self) -> dict[str, Any]:
        """The gateway's OpenAPI document (built once)."""
        if self._openapi is None:
            self._openapi = openapi_schema(self.gw.app.routes)
        return self._openapi
