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
:class:`~swarmless.gateway.context.GatewayContext`). Lifespan: open the store, then become
the active gateway or a standby replica of it (:mod:`swarmless.gateway.replicas`); the
active one wires and starts its parts in :mod:`swarmless.gateway.active`. A store that is
away, locked or full at start does not stop the gateway: it serves at once, ``/healthz``
and every route that needs the store answer 503 ``gateway_unavailable`` saying why, and it
tries the store again (:data:`STORE_RETRY_MIN` doubling to :data:`STORE_RETRY_MAX`
seconds, a log line each try) until it opens; then it starts as usual. On shutdown: stop
taking calls, let those in flight finish, stop every container, give the lease up, flush
the store. One ``drain_timeout`` bounds the whole of it: the clock starts when the gateway
stops taking calls, and each step (the drain, the server closing its connections, the
lifespan's stop) gets what is left of it, never a fresh timeout of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
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
from swarmless.dispatch.metrics import LiveGauges, Metrics
from swarmless.dispatch.scheduler import Scheduler
from swarmless.exceptions import GatewayUnavailable, SwarmlessError, Unauthorized
from swarmless.gateway.active import ActiveGateway
from swarmless.gateway.admin import Admin
from swarmless.gateway.asgi import Receive, Scope, Send, bearer, error_body, send_error
from swarmless.gateway.async_routes import accept_async
from swarmless.gateway.callbacks import CallbackPolicy, blocked_networks
from swarmless.gateway.edge import Passed, filter_headers, networks
from swarmless.gateway.openfaas import OpenFaaS
from swarmless.gateway.replicas import Replicas, peer_url
from swarmless.gateway.routing import find_route
from swarmless.gateway.sync_routes import invoke_sync
from swarmless.gateway.ui import Dashboard
from swarmless.proxy import CallerTokens
from swarmless.scaling.reconciler import Reconciler
from swarmless.store import Store

__all__ = ["Gateway", "admin_token"]

log = logging.getLogger("swarmless.gateway")
#: Paths a standby replica answers itself (about itself); it forwards all others.
_LOCAL_PATHS = frozenset({"/healthz", "/metrics"})
#: Seconds between two tries to open a store that was unavailable at start (doubling).
STORE_RETRY_MIN = 0.5
STORE_RETRY_MAX = 10.0


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

    # -- lifespan --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        """Open the store, then become the active gateway or a standby replica of it.

        A store that is unavailable (away, locked, full) is tried again in the background
        while the gateway answers 503 (see the module's docstring); one that refuses (a
        wrong URL, a schema newer than this swarmless) stops the start."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self.token is None:
            self.token, _ = admin_token(settings.data_dir)
        store: Store | None = None
        try:
            store = await Store.open(settings.store)
        except GatewayUnavailable as e:
            self.not_ready = e.message
            log.error(
                "%s; the gateway answers 503 until the store opens: next try in %g s",
                e.message,
                STORE_RETRY_MIN,
            )
        await self.backend.start()
        self.callbacks = CallbackPolicy(
            allow=settings.callback_allow,
            blocked=await blocked_networks(settings, self.backend),
        )
        if store is None:
            self._opening = asyncio.get_running_loop().create_task(self._open_store())
            return
        await self._serve(store)

    async def _open_store(self) -> None:
        """Try the store until it opens (a bounded backoff, one line each try), then serve."""
        pause, tries, since = STORE_RETRY_MIN, 1, time.monotonic()
        while True:
            await asyncio.sleep(pause)
            tries += 1
            try:
                store = await Store.open(self.settings.store)
            except GatewayUnavailable as e:
                pause = min(pause * 2, STORE_RETRY_MAX)
                self.not_ready = e.message
                log.error(
                    "store still unavailable (try %d, %.0f s since start): %s; next try in %g s",
                    tries,
                    time.monotonic() - since,
                    e.message,
                    pause,
                )
                continue
            except SwarmlessError as e:  # it answers, and refuses: retrying cannot help
                self._lost(f"the store refused to open: {e.message}")
                return
            break
        log.warning(
            "store opened after %d tries (%.1f s): the gateway serves",
            tries,
            time.monotonic() - since,
        )
        if self._shutdown_by is not None:  # stopping meanwhile
            await store.close()
            return
        try:
            await self._serve(store)
        except Exception as e:
            log.exception("the gateway could not start once its store opened")
            if self.fatal is None:
                self._lost(f"could not start once the store opened: {e}")

    def _not_ready_error(self, why: str) -> GatewayUnavailable:
        return GatewayUnavailable(
            f"the gateway is not ready: {why} (it tries again by itself)",
            retry_after=STORE_RETRY_MAX,
        )

    async def _serve(self, store: Store) -> None:
        """With its store open: become the active gateway or a standby replica of it."""
        settings = self.settings
        self.store = store
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
        self.not_ready = None  # requests wait for the active replica from now on
        await self.replicas.start()

    def _lost(self, why: str) -> None:
        """This replica was the active one and no longer holds the lease: stop serving."""
        self.fatal = why
        self.begin_shutdown()
        if self._on_fatal is not None:
            self._on_fatal()

    def on_fatal(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` when this gateway has to stop serving (the server stops)."""
        self._on_fatal = stop

    def listening_on(self, port: int) -> None:
        """The server listens on ``port`` (a free one when ``settings.port`` was 0): the
        runtime URL and the peer URL are made with it."""
        if port != self.settings.port:
            self.settings = dataclasses.replace(self.settings, port=port)

    async def _start_active(self) -> None:
        """Start as the active gateway: its parts are wired in :mod:`.active`."""
        settings = self.settings
        assert self.store is not None
        if self.runtime_url is None:
            host = settings.advertise_url or f"http://{self.backend.runtime_host()}:{settings.port}"
            self.runtime_url = host.rstrip("/")
        self.active = active = ActiveGateway(
            settings=settings,
            store=self.store,
            backend=self.backend,
            metrics=self.metrics,
            callers=self.callers,
            callbacks=self.callbacks,
            runtime_url=self.runtime_url,
            scaling=self.scaling,
        )
        self.metrics.add_gauges(LiveGauges(active.snapshot))
        await active.start()

    def start_reconciler(self, name: str) -> None:
        """Start (or wake) the reconciler of warm function ``name``."""
        assert self.active is not None
        self.active.start_reconciler(name)

    def stop_reconciler(self, name: str) -> None:
        """Stop the reconciler of a removed function."""
        if self.active is not None:
            self.active.stop_reconciler(name)

    def shutdown_left(self) -> float:
        """Seconds left of the shutdown's ``drain_timeout`` (its clock starts at the first
        call of this or :meth:`begin_shutdown`)."""
        if self._shutdown_by is None:
            self._shutdown_by = time.monotonic() + self.drain_timeout
        return max(self._shutdown_by - time.monotonic(), 0.0)

    async def drain(self) -> None:
        """Wait (what is left of ``drain_timeout``) for the calls in flight to finish."""
        if self.active is not None:
            await self.active.drain(self.shutdown_left())

    def begin_shutdown(self) -> None:
        """Stop taking calls; tell every worker to finish what it holds and exit."""
        self.shutdown_left()
        if self.active is not None:
            self.active.begin_shutdown()

    async def stop(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opening
        if self.active is not None:
            await self.active.stop(self.shutdown_left())
        if self.replicas is not None:  # after the containers: a standby takes over now
            await self.replicas.close()
        await self.backend.close()
        if self.store is not None:
            await self.store.close()

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
        """Liveness: answers 200 while the gateway runs (active or standby replica); 503
        ``gateway_unavailable`` saying why while it is not ready (its store did not open)."""
        not_ready = self.not_ready
        if not_ready is not None:
            err = self._not_ready_error(not_ready)
            retry = str(max(1, round(err.retry_after)))
            headers = {"retry-after": retry, "x-swarmless-error": "1"}
            return Response(error_body(err), 503, headers, media_type="application/json")
        body: dict[str, Any] = {"status": "ok", "version": __version__}
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
