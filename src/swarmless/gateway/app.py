"""The gateway: one ASGI app, plain Starlette for the admin routes, raw ASGI for the hot paths.

Routes (OpenFaaS paths where they exist)::

    ANY  /function/{name}[/{path}]        sync invocation (the HTTP request is the input)
    POST /runtime/next                     warm containers pull work (worker token)
    POST /runtime/logs/{call_id}           ... and send the logs of one call
    GET|POST|PUT|DELETE /system/functions[/{name}]   deploy, inspect, update, remove (admin)
    POST /system/scale/{name}              pin a warm function's container count (admin)
    GET  /invocations[?function=&status=&limit=]     records (admin)
    GET  /invocations/{id}[/logs]
    GET  /healthz  /metrics  /openapi.json  /docs

Lifespan: open the store, start the backend, remove containers a previous gateway left,
start a reconciler per warm function; on shutdown stop taking calls, let those in flight
finish (bounded), stop every container, flush the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from swarmless import __version__
from swarmless.backends.base import Backend
from swarmless.config import Settings
from swarmless.dispatch.async_runner import AsyncRunner
from swarmless.dispatch.dispatcher import Dispatcher, Request
from swarmless.dispatch.metrics import LiveGauges, Metrics
from swarmless.dispatch.scheduler import Scheduler
from swarmless.exceptions import (
    InvalidArgument,
    InvocationNotFound,
    NotFound,
    SpecError,
    SwarmlessError,
    Unauthorized,
)
from swarmless.gateway.asgi import (
    ClientGone,
    Receive,
    Scope,
    Send,
    bearer,
    header,
    internal_error,
    read_body,
    send_error,
    send_response,
)
from swarmless.gateway.async_routes import (
    accept_async,
    get_result,
    list_schedules,
    retry_invocation,
)
from swarmless.gateway.docs import docs_page, openapi_schema
from swarmless.gateway.replicas import Replicas, peer_url
from swarmless.gateway.runtime_api import RuntimeAPI
from swarmless.proxy import CallerTokens, DockerProxy, start_proxy
from swarmless.records import STATUSES, InvocationRecord
from swarmless.scaling.reconciler import Reconciler
from swarmless.spec import FunctionSpec
from swarmless.store import Store

__all__ = ["Gateway", "admin_token"]

log = logging.getLogger("swarmless.gateway")
#: Paths a standby replica answers itself (about itself); it forwards all others.
_LOCAL_PATHS = frozenset({"/healthz", "/metrics"})
_SECRET_NAME = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,61}[a-z0-9])?$")


def admin_token(data_dir: Path) -> tuple[str, bool]:
    """The admin token kept in ``data_dir/token``; created (and flagged new) on first use."""
    path = data_dir / "token"
    if path.is_file():
        return path.read_text().strip(), False
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token, True


class Gateway:
    """The gateway's state and its ASGI entry point (``gateway`` is the ASGI app)."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend | None = None,
        token: str | None = None,
        runtime_url: str | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        if backend is None and settings.backend == "swarm":
            from swarmless.backends.swarm import SwarmBackend

            backend = SwarmBackend(settings)
        if backend is None:
            from swarmless.backends.docker import DockerBackend

            backend = DockerBackend(settings)
        self.backend = backend
        self.token = token
        self.runtime_url = runtime_url
        self.drain_timeout = drain_timeout
        self.metrics = Metrics()
        self.store: Store | None = None
        self.dispatcher: Dispatcher | None = None
        self.runtime_api: RuntimeAPI | None = None
        self.reconcilers: dict[str, Reconciler] = {}
        self.runner: AsyncRunner | None = None
        self.scheduler: Scheduler | None = None
        #: Tokens of function containers (function-to-function calls, scoped Docker API).
        self.callers = CallerTokens()
        self.proxy: DockerProxy | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: The lease among replicas; ``replicas.active`` once this one serves.
        self.replicas: Replicas | None = None
        #: Why this gateway had to stop serving (it lost the lease), if it had to.
        self.fatal: str | None = None
        #: Called when it has to (the server stops).
        self.on_fatal: Callable[[], None] | None = None
        self.app = self._build_app()

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            replicas = self.replicas
            if replicas is not None and not replicas.active and path not in _LOCAL_PATHS:
                # A standby replica: the active one serves it (see gateway/replicas.py).
                replayed = await replicas.forward(scope, receive, send)
                if replayed is None:
                    return
                receive = replayed
            if path.startswith("/function/"):
                await self._function(scope, receive, send)
                return
            if path.startswith("/async-function/") and self.runner is not None:
                await accept_async(self, scope, receive, send)
                return
            if path.startswith("/runtime/") and self.runtime_api is not None:
                await self.runtime_api(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _function(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``ANY /function/{name}[/{path}]``: one sync invocation."""
        assert self.dispatcher is not None
        rest: str = scope["path"][len("/function/") :]
        name, slash, sub = rest.partition("/")
        try:
            spec, _ = self.dispatcher.get(name)
            token = bearer(scope)
            caller = self.callers.caller(token, self.dispatcher)
            if spec.private and caller is None:
                self.check_admin(token)
            body = await read_body(scope, receive, spec.max_body)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
            parent = None
            if caller is not None:  # a call from a function: its token is not the callee's
                claimed = header(scope, b"x-swarmless-parent")
                parent = self.callers.parent(caller, claimed, self.dispatcher)
                headers = [
                    h for h in headers if h[0] not in ("authorization", "x-swarmless-parent")
                ]
            client = scope.get("client") or ("", 0)
            server = scope.get("server") or ("127.0.0.1", self.settings.port)
            request = Request(
                method=scope["method"],
                path=slash + sub,
                query=scope.get("query_string", b"").decode("latin-1"),
                headers=headers,
                body=body,
                remote_addr=str(client[0]),
                remote_port=int(client[1]),
                server_name=str(server[0]),
                server_port=int(server[1] or 0),
                scheme=scope.get("scheme", "http"),
            )
            response = await self.dispatcher.invoke(name, request, parent=parent)
        except ClientGone:
            return
        except SwarmlessError as e:
            await send_error(send, e)
            return
        except Exception as e:  # a bug of ours: still a JSON answer, never a bare 500
            log.exception("unexpected error invoking %s", name)
            await send_error(send, internal_error(e))
            return
        headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        headers = [h for h in headers if h[0] not in (b"content-length", b"transfer-encoding")]
        headers.append((b"x-call-id", response.call_id.encode()))
        await send_response(send, response.status, response.body, headers)

    def check_admin(self, token: str | None) -> None:
        if not self.token:
            return
        if token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            raise Unauthorized("this route needs the admin token: Authorization: Bearer <token>")

    # -- lifespan --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Open the store, then become the active gateway or a standby replica of it."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self.token is None:
            self.token, _ = admin_token(settings.data_dir)
        self.store = await Store.open(settings.store)
        await self.backend.start()
        me = peer_url(settings.host, settings.port, settings.peer_url)
        self.replicas = Replicas(
            self.store,
            me,
            holder=f"{me} {socket.gethostname()} {settings.data_dir}",
            lease=f"gateway:{settings.instance}",
            ttl=settings.lease_ttl,
            lead=self._start_active,
            lost=self._lost,
        )
        await self.replicas.start()

    def _lost(self, why: str) -> None:
        """This replica was the active one and no longer holds the lease: stop serving."""
        self.fatal = why
        self.begin_shutdown()
        if self.on_fatal is not None:
            self.on_fatal()

    async def _start_active(self) -> None:
        """Start as the active gateway: containers, queues, autoscalers, async runner."""
        settings = self.settings
        assert self.store is not None
        if self.runtime_url is None:
            host = settings.advertise_url or f"http://{self.backend.runtime_host()}:{settings.port}"
            self.runtime_url = host.rstrip("/")
        self.dispatcher = Dispatcher(
            store=self.store,
            backend=self.backend,
            metrics=self.metrics,
            runtime_url=self.runtime_url,
        )
        self.metrics.add_gauges(LiveGauges(self.snapshot))
        self.runtime_api = RuntimeAPI(self.dispatcher)
        self.proxy = await start_proxy(settings, self.backend, self.dispatcher, self.callers)
        await self._remove_leftovers()
        await self.dispatcher.load()
        for name in self.dispatcher.pools:
            self._start_reconciler(name)
        self.runner = AsyncRunner(self.dispatcher, self.store, owner=settings.instance)
        self.scheduler = Scheduler(self.store, self.dispatcher.functions)
        loop = asyncio.get_running_loop()
        self._tasks["<async>"] = loop.create_task(self.runner.run())
        self._tasks["<schedules>"] = loop.create_task(self._schedules(self.scheduler))
        self._tasks["<counts>"] = loop.create_task(self._refresh_counts(self.runner))

    async def _remove_leftovers(self) -> None:
        """Containers of a previous gateway (a crash, a kill) cannot be reached: remove them."""
        found = await self.backend.list_containers()
        if found:
            log.info("removing %d container(s) left by a previous gateway", len(found))
        await asyncio.gather(
            *(self.backend.stop_container(c.id) for c in found), return_exceptions=True
        )

    def _start_reconciler(self, name: str) -> None:
        assert self.dispatcher is not None
        pool = self.dispatcher.pools[name]
        old = self.reconcilers.get(name)
        if old is not None and old.pool is pool and not self._tasks[name].done():
            pool.wake.set()
            return
        rec = Reconciler(self.dispatcher, pool)
        self.reconcilers[name] = rec
        self._tasks[name] = asyncio.get_running_loop().create_task(rec.run())

    async def drain(self) -> None:
        """Wait (up to ``drain_timeout``) for the calls in flight to finish."""
        if self.dispatcher is not None:
            await self.dispatcher.drain(self.drain_timeout)

    def begin_shutdown(self) -> None:
        """Stop taking calls; tell every worker to finish what it holds and exit."""
        if self.runner is not None:
            self.runner.stop_claiming()
        if self.dispatcher is not None:
            self.dispatcher.begin_shutdown()

    async def _schedules(self, scheduler: Scheduler) -> None:
        task = asyncio.get_running_loop().create_task(scheduler.run())
        try:
            while True:
                await scheduler.fired.wait()
                scheduler.fired.clear()
                if self.runner is not None:
                    self.runner.wake.set()
        finally:
            task.cancel()

    async def _refresh_counts(self, runner: AsyncRunner) -> None:
        while True:
            await runner.refresh_counts()
            await asyncio.sleep(2.0)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop(self.drain_timeout)
        if self.dispatcher is not None:
            await self.dispatcher.drain(self.drain_timeout)
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            await self.dispatcher.close()
        if self.proxy is not None:  # after the workers: their children go with them
            await self.proxy.close()
        if self.replicas is not None:  # after the containers: a standby takes over now
            await self.replicas.close()
        await self.backend.close()
        if self.store is not None:
            await self.store.close()

    # -- admin routes ------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"], include_in_schema=False),
            Route("/docs", self.docs, methods=["GET"], include_in_schema=False),
            Route("/system/functions", self.list_functions, methods=["GET"]),
            Route("/system/functions", self.deploy, methods=["POST", "PUT"]),
            Route("/system/functions/{name}", self.get_function, methods=["GET"]),
            Route("/system/functions/{name}", self.update_function, methods=["PUT"]),
            Route("/system/functions/{name}", self.delete_function, methods=["DELETE"]),
            Route("/system/scale/{name}", self.scale, methods=["POST"]),
            Route("/invocations", self.list_invocations, methods=["GET"]),
            Route("/invocations/{call_id}", self.get_invocation, methods=["GET"]),
            Route("/invocations/{call_id}/logs", self.get_logs, methods=["GET"]),
            Route("/invocations/{call_id}/result", self.get_result, methods=["GET"]),
            Route("/invocations/{call_id}/retry", self.retry, methods=["POST"]),
            Route("/system/schedules", self.schedules, methods=["GET"]),
            Route("/system/secrets", self.list_secrets, methods=["GET"]),
            Route("/system/secrets/{name}", self.put_secret, methods=["PUT", "POST"]),
            Route("/system/secrets/{name}", self.delete_secret, methods=["DELETE"]),
        ]
        handlers: Mapping[Any, Any] = {
            SwarmlessError: self._on_error,
            HTTPException: self._on_http_error,
            Exception: self._on_crash,
        }
        return Starlette(routes=routes, exception_handlers=handlers, lifespan=self.lifespan)

    async def _on_error(self, _request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, SwarmlessError)
        headers = {"x-swarmless-error": "1"}
        if exc.invocation:
            headers["x-call-id"] = exc.invocation
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    async def _on_http_error(self, _request: HTTPRequest, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        body = {"error": "http_error", "message": exc.detail or f"HTTP {exc.status_code}"}
        return JSONResponse(body, status_code=exc.status_code, headers={"x-swarmless-error": "1"})

    async def _on_crash(self, request: HTTPRequest, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        body = {"error": "internal", "message": f"{type(exc).__name__}: {exc}"}
        return JSONResponse(body, status_code=500, headers={"x-swarmless-error": "1"})

    def _admin(self, request: HTTPRequest) -> Dispatcher:
        auth = request.headers.get("authorization", "")
        self.check_admin(auth[7:].strip() if auth[:7].lower() == "bearer " else None)
        assert self.dispatcher is not None
        return self.dispatcher

    async def healthz(self, _request: HTTPRequest) -> Response:
        """Liveness: answers 200 while the gateway runs (active or standby replica)."""
        body: dict[str, Any] = {"status": "ok", "version": __version__}
        if self.replicas is not None:
            body["role"] = self.replicas.role
            body["active"] = self.replicas.leader_url
        return JSONResponse(body)

    async def metrics_route(self, _request: HTTPRequest) -> Response:
        """Prometheus metrics."""
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Containers and calls per function, async queue included (metrics, ``ls``)."""
        assert self.dispatcher is not None
        snap = self.dispatcher.snapshot()
        if self.runner is not None:
            for name, counts in snap.items():
                counts["async_queued"] = self.runner.queued.get(name, 0)
                counts["async_running"] = self.runner.running.get(name, 0)
        return snap

    def _describe(self, spec: FunctionSpec, version: int) -> dict[str, Any]:
        assert self.dispatcher is not None
        counts = self.snapshot().get(spec.name, {})
        rec = self.reconcilers.get(spec.name)
        return {
            "name": spec.name,
            "version": version,
            "spec": spec.to_dict(),
            "containers": counts,
            "scale": {
                "pinned": rec.pinned if rec else None,
                "desired": rec.last.desired if rec and rec.last else None,
                "reason": rec.last.reason if rec and rec.last else None,
            },
        }

    async def list_functions(self, request: HTTPRequest) -> Response:
        """List deployed functions with their containers."""
        d = self._admin(request)
        return JSONResponse([self._describe(s, v) for s, v in d.functions.values()])

    async def _spec_from(self, request: HTTPRequest, name: str | None = None) -> FunctionSpec:
        try:
            data = await request.json()
        except ValueError:
            raise InvalidArgument("the body must be a JSON function spec") from None
        if not isinstance(data, dict):
            raise SpecError({"spec": f"must be a JSON object, got {type(data).__name__}"})
        if name is not None and data.setdefault("name", name) != name:
            raise SpecError({"name": f"{data['name']!r} does not match the URL ({name!r})"})
        return FunctionSpec.from_dict(data)

    async def deploy(self, request: HTTPRequest) -> Response:
        """Deploy (or update) a function from a JSON spec."""
        d = self._admin(request)
        spec = await self._spec_from(request)
        return await self._deploy(d, spec)

    async def _deploy(self, d: Dispatcher, spec: FunctionSpec) -> Response:
        existed = spec.name in d.functions
        version = await d.deploy(spec)
        if spec.docker == "host-socket":
            log.warning(
                "function %r has docker: host-socket: its containers get the engine's socket, "
                "which is root on this host; docker: scoped is the safe choice",
                spec.name,
            )
        if spec.name in d.pools:
            self._start_reconciler(spec.name)
        return JSONResponse(self._describe(spec, version), status_code=200 if existed else 201)

    async def update_function(self, request: HTTPRequest) -> Response:
        """Update a deployed function."""
        d = self._admin(request)
        name = request.path_params["name"]
        d.get(name)
        return await self._deploy(d, await self._spec_from(request, name))

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
        self.reconcilers.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        return Response(status_code=204)

    async def scale(self, request: HTTPRequest) -> Response:
        """Pin a warm function to N containers (``{"replicas": N}``; null unpins)."""
        d = self._admin(request)
        name = request.path_params["name"]
        spec, version = d.get(name)
        rec = self.reconcilers.get(name)
        if rec is None:
            raise InvalidArgument(f"function {name!r} is {spec.mode}: only warm functions scale")
        data = await request.json()
        n = data.get("replicas") if isinstance(data, dict) else None
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 0):
            raise InvalidArgument(f"replicas must be a whole number >= 0 or null, got {n!r}")
        rec.pinned = n
        rec.pool.wake.set()
        return JSONResponse(self._describe(spec, version))

    async def list_invocations(self, request: HTTPRequest) -> Response:
        """Invocation records, newest first (``function``, ``status``, ``limit``)."""
        self._admin(request)
        assert self.store is not None
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
        records = await self.store.list_invocations(
            function=q.get("function"), status=status, parent=q.get("parent"), limit=limit
        )
        return JSONResponse([r.to_dict() for r in records])

    async def _record(self, request: HTTPRequest) -> InvocationRecord:
        """The record named by the route's ``call_id`` (admin only); 404 when unknown."""
        self._admin(request)
        assert self.store is not None
        call_id = request.path_params["call_id"]
        rec = await self.store.get_invocation(call_id)
        if rec is None:
            raise InvocationNotFound(call_id)
        return rec

    async def get_invocation(self, request: HTTPRequest) -> Response:
        """One invocation record, with the ids of the calls it made."""
        rec = await self._record(request)
        assert self.store is not None
        children = await self.store.list_invocations(parent=rec.id, limit=1000)
        body = rec.to_dict()
        body["children"] = [c.id for c in children]
        return JSONResponse(body)

    async def get_logs(self, request: HTTPRequest) -> Response:
        """What one invocation printed: ``{"stdout": ..., "stderr": ...}``."""
        call_id = (await self._record(request)).id
        assert self.store is not None
        logs = await self.store.get_logs(call_id)
        stdout, stderr = logs or (b"", b"")
        return JSONResponse(
            {
                "id": call_id,
                "stdout": stdout.decode("utf-8", "replace"),
                "stderr": stderr.decode("utf-8", "replace"),
            }
        )

    async def get_result(self, request: HTTPRequest) -> Response:
        """What a finished async call answered (``?wait=S`` waits for it)."""
        self._admin(request)
        return await get_result(self, request)

    async def retry(self, request: HTTPRequest) -> Response:
        """Queue a dead or failed async call again (the dead letter's redrive)."""
        self._admin(request)
        return await retry_invocation(self, request)

    async def list_secrets(self, request: HTTPRequest) -> Response:
        """Names of the secrets functions can mount (never their values)."""
        self._admin(request)
        return JSONResponse(await self.backend.list_secrets())

    async def put_secret(self, request: HTTPRequest) -> Response:
        """Create or replace a secret; the body is its value."""
        self._admin(request)
        name = request.path_params["name"]
        if not _SECRET_NAME.match(name):
            raise InvalidArgument(
                f"secret name {name!r}: lower-case letters, digits, '-', '_' and '.' only"
            )
        data = await request.body()
        if len(data) > 512 * 1024:
            raise InvalidArgument(f"secret {name!r} is {len(data)} bytes; 512 KiB at most")
        await self.backend.put_secret(name, data)
        return Response(status_code=204)

    async def delete_secret(self, request: HTTPRequest) -> Response:
        """Remove a secret."""
        self._admin(request)
        name = request.path_params["name"]
        if not await self.backend.delete_secret(name):
            raise NotFound(f"no secret named {name!r}")
        return Response(status_code=204)

    async def schedules(self, request: HTTPRequest) -> Response:
        """Scheduled functions and their next fire times."""
        self._admin(request)
        return await list_schedules(self, request)

    async def openapi(self, _request: HTTPRequest) -> Response:
        """The OpenAPI description of the gateway (admin routes from their docstrings)."""
        return JSONResponse(openapi_schema(self.app.routes))

    async def docs(self, _request: HTTPRequest) -> Response:
        """A self-contained page listing the API (no CDN needed)."""
        return HTMLResponse(docs_page(openapi_schema(self.app.routes)))
