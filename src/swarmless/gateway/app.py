"""The gateway: one ASGI app, plain Starlette for the admin routes, raw ASGI for the hot paths.

Routes (OpenFaaS paths where they exist)::

    ANY  /function/{name}[/{path}]        sync invocation (the HTTP request is the input)
    ANY  /async-function/{name}[/{path}]  async invocation: queued durably, 202 + X-Call-Id
    ANY  {route}[/{path}]                  a function's own path prefix or host name (sync)
    POST /runtime/next                     warm containers pull work (worker token)
    POST /runtime/logs/{call_id}           ... and send the logs of one call
    GET|POST|PUT|DELETE /system/functions[/{name}]   deploy, inspect, update, remove (admin)
    POST /system/scale/{name}              pin a warm function's container count (admin)
    GET  /system/schedules                 schedules and their next fire times (admin)
    GET|PUT|POST|DELETE /system/secrets[/{name}]     secrets functions mount (admin)
    GET  /invocations[?function=&status=&parent=&limit=]   records (admin)
    GET  /invocations/{id}[/logs|/result]  one record, its logs, an async call's answer
    POST /invocations/{id}/retry           redrive a dead async call (admin)
    GET  /healthz  /openapi.json  /docs
    OpenFaaS's /system/functions (its bodies), /system/function/{name},
    /system/scale-function/{name}, /system/info   (:mod:`~swarmless.gateway.openfaas`)
    GET  /metrics                          (admin, unless ``metrics_public``)

Who serves what: this module routes; ``/function/*`` (the hot path: the edge, then the
dispatcher) is :mod:`~swarmless.gateway.sync_routes`, ``/async-function/*``
:mod:`~swarmless.gateway.async_routes`, ``/runtime/*`` :mod:`~swarmless.gateway.runtime_api`,
the rest :mod:`~swarmless.gateway.admin` (the routes see this gateway as a
:class:`~swarmless.gateway.context.GatewayContext`). Lifespan (the store opened, retried
while it is away; the active replica or a standby; the shutdown under one
``drain_timeout``): :mod:`~swarmless.gateway.lifecycle`, whose :func:`admin_token` and
store retry pauses this module re-exports, every import path unchanged.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from swarmless import __version__
from swarmless.backends.base import Backend
from swarmless.config import Settings
from swarmless.dispatch.async_runner import AsyncRunner
from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.dispatch.metrics import Metrics
from swarmless.dispatch.scheduler import Scheduler
from swarmless.exceptions import Unauthorized
from swarmless.gateway.active import ActiveGateway
from swarmless.gateway.admin import Admin
from swarmless.gateway.asgi import Receive, Scope, Send, bearer, error_body, send_error
from swarmless.gateway.async_routes import accept_async
from swarmless.gateway.callbacks import CallbackPolicy
from swarmless.gateway.edge import Passed, filter_headers, networks
from swarmless.gateway.lifecycle import STORE_RETRY_MAX as STORE_RETRY_MAX
from swarmless.gateway.lifecycle import STORE_RETRY_MIN as STORE_RETRY_MIN
from swarmless.gateway.lifecycle import Lifecycle, admin_token
from swarmless.gateway.openfaas import OpenFaaS
from swarmless.gateway.replicas import Replicas
from swarmless.gateway.routing import find_route
from swarmless.gateway.sync_routes import invoke_sync
from swarmless.gateway.ui import Dashboard
from swarmless.proxy import CallerTokens
from swarmless.scaling.reconciler import Reconciler
from swarmless.store import Store

__all__ = ["Gateway", "admin_token"]

#: Paths a standby replica answers itself (about itself); it forwards all others.
_LOCAL_PATHS = frozenset({"/healthz", "/metrics"})


class Gateway(Lifecycle):
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
        #: The autoscaler's windows and thresholds (validated here, at start-up).
        self.scaling = settings.scaling
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
        #: What this replica runs once it is the active one (None until then).
        self.active: ActiveGateway | None = None
        #: Tokens of function containers (function-to-function calls, scoped Docker API).
        self.callers = CallerTokens()
        #: The lease among replicas; ``replicas.active`` once this one serves.
        self.replicas: Replicas | None = None
        #: Why this gateway had to stop serving (it lost the lease), if it had to.
        self.fatal: str | None = None
        #: Why it does not serve yet (its store did not open at start), None once it does.
        self.not_ready: str | None = None
        self._opening: asyncio.Task[None] | None = None
        #: When the shutdown's ``drain_timeout`` runs out (monotonic; None: not stopping).
        self._shutdown_by: float | None = None
        self._on_fatal: Callable[[], None] | None = None
        #: Proxies whose X-Forwarded-* the edge believes (swarmless.gateway.edge).
        self.trusted_proxies = networks(settings.trusted_proxies)
        #: Where callbacks may go; knows the function network once the backend started.
        self.callbacks = CallbackPolicy(allow=settings.callback_allow)
        self.app = self._build_app()

    # -- the active replica's parts (None on a standby) --------------------------------

    @property
    def dispatcher(self) -> Dispatcher | None:
        return self.active.dispatcher if self.active is not None else None

    @property
    def runner(self) -> AsyncRunner | None:
        return self.active.runner if self.active is not None else None

    @property
    def scheduler(self) -> Scheduler | None:
        return self.active.scheduler if self.active is not None else None

    @property
    def reconcilers(self) -> Mapping[str, Reconciler]:
        return self.active.reconcilers if self.active is not None else {}

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            not_ready = self.not_ready
            if not_ready is not None and path not in _LOCAL_PATHS:
                await send_error(send, self._not_ready_error(not_ready))
                return
            replicas = self.replicas
            if replicas is not None and not replicas.active and path not in _LOCAL_PATHS:
                if path.startswith("/async-function/") and self._standby_may_queue(scope):
                    await accept_async(self, scope, receive, send)
                    return
                # A standby replica: the active one serves it (see gateway/replicas.py).
                replayed = await replicas.forward(scope, receive, send)
                if replayed is None:
                    return
                receive = replayed
            active = self.active
            if path.startswith("/function/") and active is not None:
                await invoke_sync(self, active.dispatcher, scope, receive, send)
                return
            if path.startswith("/async-function/") and active is not None:
                await accept_async(self, scope, receive, send)
                return
            if path.startswith("/runtime/") and active is not None:
                await active.runtime_api(scope, receive, send)
                return
            if active is not None:
                routed = find_route(active.dispatcher.functions, path, scope["headers"])
                if routed is not None:
                    await invoke_sync(self, active.dispatcher, scope, receive, send, routed)
                    return
        await self.app(scope, receive, send)

    def _standby_may_queue(self, scope: Scope) -> bool:
        """Whether a standby replica queues this async call itself: it can tell who calls
        when there is no token or the admin's (function containers' tokens are known to the
        active replica only: those it forwards)."""
        token = bearer(scope)
        return token is None or self.is_admin_token(token)

    def edge(self, scope: Scope, *, consumed: frozenset[str] = frozenset()) -> Passed:
        """What of this request's headers a function may see (:mod:`swarmless.gateway.edge`):
        never the gateway's credentials, hop-by-hop or ``Proxy`` headers, or a client's
        ``X-Forwarded-*`` unless it is a trusted proxy; InvalidArgument for ambiguous ones."""
        return filter_headers(
            scope["headers"],
            peer=scope.get("client"),
            scheme=str(scope.get("scheme") or "http"),
            server=scope.get("server"),
            trusted_proxies=self.trusted_proxies,
            admin_token=self.token,
            is_credential=self.is_gateway_token,
            consumed=consumed,
        )

    def is_gateway_token(self, token: str) -> bool:
        """Whether ``token`` is one the gateway issued or holds: the admin token, a function
        container's caller token, a warm worker's token."""
        if self.is_admin_token(token) or self.callers.lookup(token) is not None:
            return True
        return self.active is not None and token in self.active.dispatcher.tokens

    def is_admin_token(self, token: str | None) -> bool:
        """Whether ``token`` is the admin token (there being one)."""
        return (
            bool(self.token)
            and token is not None
            and hmac.compare_digest(token.encode(), str(self.token).encode())
        )

    def check_admin(self, token: str | None) -> None:
        """Unauthorized unless ``token`` is the admin token (or the gateway has none)."""
        if self.token and not self.is_admin_token(token):
            raise Unauthorized(
                "this route needs the admin token: Authorization: Bearer <token> "
                "(or basic auth, user admin, the token as password)"
            )

    # -- admin routes ------------------------------------------------------------------

    def _build_app(self) -> Starlette:
        admin = Admin(self)
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
            *OpenFaaS(self, admin, self.metrics.invocations).routes(),  # before admin's
            *admin.routes(),
            *Dashboard(self).routes(),  # /ui, and / showing it
        ]
        return Starlette(
            routes=routes, exception_handlers=admin.exception_handlers(), lifespan=self.lifespan
        )

    async def healthz(self, _request: HTTPRequest) -> Response:
        """Liveness: answers 200 while the gateway runs (active or standby replica), with
        ``status: degraded`` and why while its store is away after start; 503
        ``gateway_unavailable`` saying why while it is not ready (its store did not open)."""
        not_ready = self.not_ready
        if not_ready is not None:
            err = self._not_ready_error(not_ready)
            retry = str(max(1, round(err.retry_after)))
            headers = {"retry-after": retry, "x-swarmless-error": "1"}
            return Response(error_body(err), 503, headers, media_type="application/json")
        body: dict[str, Any] = {"status": "ok", "version": __version__}
        store = self.store
        since = store.down_since if store is not None else None
        if since is not None:
            # Still alive (200: a replica keeps its lease, sync calls to warm functions run),
            # but say so: what needs the store answers 503 until it is back.
            body["status"] = "degraded"
            body["store"] = (
                f"unavailable for {time.monotonic() - since:.0f} s; what needs it "
                "(deploys, async calls, records) answers 503 until it is back"
            )
        if self.replicas is not None:
            body["role"] = self.replicas.role
            body["active"] = self.replicas.leader_url
        return JSONResponse(body)

    async def metrics_route(self, request: HTTPRequest) -> Response:
        """Prometheus metrics: admin token needed (they name every function, private ones
        too) unless ``metrics_public``."""
        if not self.settings.metrics_public:
            self.check_admin(bearer(request.scope))
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Containers and calls per function, async queue included (metrics, ``ls``)."""
        assert self.active is not None
        return self.active.snapshot()
