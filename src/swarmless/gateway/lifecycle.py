"""The gateway's life: start, serve once its store opens, stop (a part of
:class:`~swarmless.gateway.app.Gateway`).

Lifespan: open the store, then become the active gateway or a standby replica of it
(:mod:`swarmless.gateway.replicas`); the active one wires and starts its parts in
:mod:`swarmless.gateway.active`. A store that is
away, locked or full at start does not stop the gateway: it serves at once, ``/healthz``
and every route that needs the store answer 503 ``gateway_unavailable`` saying why, and it
tries the store again (:data:`STORE_RETRY_MIN` doubling to :data:`STORE_RETRY_MAX`
seconds, a log line each try) until it opens; then it starts as usual. A Docker Engine
that does not answer at start is waited for the same way, in the same loop (503
``engine_unavailable`` with the reason until it answers; one that answers and refuses
still stops the start). On shutdown: stop taking calls, let those in flight finish, stop
every container, give the lease up, flush the store. One ``drain_timeout`` bounds the
whole of it: the clock starts when the gateway stops taking calls, and each step (the
drain, the server closing its connections, the lifespan's stop) gets what is left of it,
never a fresh timeout of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette

from swarmless.backends.base import Backend
from swarmless.config import Settings
from swarmless.dispatch.metrics import LiveGauges, Metrics
from swarmless.exceptions import EngineUnavailable, GatewayUnavailable, SwarmlessError
from swarmless.gateway.active import ActiveGateway
from swarmless.gateway.callbacks import CallbackPolicy, blocked_networks
from swarmless.gateway.replicas import Replicas, peer_url
from swarmless.proxy import CallerTokens
from swarmless.scaling.settings import ScalingSettings
from swarmless.store import Store

__all__ = ["STORE_RETRY_MAX", "STORE_RETRY_MIN", "EngineNotReady", "Lifecycle", "admin_token"]

log = logging.getLogger("swarmless.gateway")
#: Seconds between two tries to open a store that was unavailable at start (doubling).
STORE_RETRY_MIN = 0.5
STORE_RETRY_MAX = 10.0


class EngineNotReady(EngineUnavailable):
    """The gateway is not ready: no Docker Engine answered yet (503 ``engine_unavailable``,
    with a ``Retry-After``)."""

    def __init__(self, address: str, reason: str, *, message: str, retry_after: float) -> None:
        super().__init__(address, reason, message=message)
        self.retry_after = retry_after


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


class Lifecycle:
    """Start-up, the store's retries, becoming the active replica, and the shutdown of a
    gateway (its state is :class:`~swarmless.gateway.app.Gateway`'s)."""

    settings: Settings
    scaling: ScalingSettings
    backend: Backend
    token: str | None
    runtime_url: str | None
    drain_timeout: float
    metrics: Metrics
    store: Store | None
    active: ActiveGateway | None
    callers: CallerTokens
    replicas: Replicas | None
    fatal: str | None
    not_ready: str | None
    callbacks: CallbackPolicy
    _opening: asyncio.Task[None] | None
    #: Why the engine did not answer at start (None: it did, or was not asked yet).
    _engine_down: EngineUnavailable | None = None
    #: Why the store did not open at start (None: it did, or was not tried yet).
    _store_down: str | None = None
    #: Called once an engine away at start answers, before anything runs on it.
    _on_engine: Callable[[], Awaitable[None]] | None = None
    _shutdown_by: float | None
    _on_fatal: Callable[[], None] | None

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
        wrong URL, a schema newer than this swarmless) stops the start. So does the Docker
        Engine: one that does not answer is waited for, one that refuses stops the start."""
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self.token is None:
            self.token, _ = admin_token(settings.data_dir)
        store = await self._try_store()
        # The server asked the engine just before (and told it was away): try it later.
        engine = self._engine_down is None and await self._try_engine()
        if store is None or not engine:
            self._say_not_ready()
            what = " and ".join(
                w
                for w, down in (("store opens", store is None), ("engine answers", not engine))
                if down
            )
            log.error(
                "%s; the gateway answers 503 until the %s: next try in %g s",
                (self.not_ready or "").rstrip("."),
                what,
                STORE_RETRY_MIN,
            )
            self._opening = asyncio.get_running_loop().create_task(self._open(store))
            return
        await self._serve(store)

    async def _try_store(self) -> Store | None:
        """The store, or None when it is unavailable (why in ``_store_down``)."""
        try:
            store = await Store.open(self.settings.store)
        except GatewayUnavailable as e:
            self._store_down = e.message
            return None
        self._store_down = None
        return store

    async def _try_engine(self) -> bool:
        """Start the backend (and learn the networks callbacks must not reach); False when
        the engine does not answer (why in ``_engine_down``). An engine that answers and
        refuses raises."""
        try:
            await self.backend.start()
            blocked = await blocked_networks(self.settings, self.backend)
        except EngineUnavailable as e:
            self._engine_down = e
            return False
        self.callbacks = CallbackPolicy(allow=self.settings.callback_allow, blocked=blocked)
        self._engine_down = None
        return True

    def _say_not_ready(self) -> None:
        """``not_ready``: why the gateway does not serve yet (None once nothing is away)."""
        engine = self._engine_down
        reasons = [r for r in (self._store_down, engine and engine.message) if r]
        self.not_ready = "; ".join(reasons) or None

    async def _open(self, store: Store | None) -> None:
        """Try the store and the engine until both answer (a bounded backoff, one line
        each try), then serve."""
        pause, tries, since = STORE_RETRY_MIN, 1, time.monotonic()
        engine = self._engine_down is None
        try:
            while store is None or not engine:
                await asyncio.sleep(pause)
                tries += 1
                if store is None:
                    try:
                        store = await self._try_store()
                    except SwarmlessError as e:  # it answers, and refuses: retrying cannot help
                        self._lost(f"the store refused to open: {e.message}")
                        return
                if not engine:
                    try:
                        engine = await self._try_engine()
                    except SwarmlessError as e:  # it answers, and refuses
                        self._lost(f"the Docker Engine refused the start: {e.message}")
                        return
                    if engine and self._on_engine is not None:
                        await self._on_engine()
                self._say_not_ready()
                if store is None or not engine:
                    pause = min(pause * 2, STORE_RETRY_MAX)
                    what = (
                        "store" if engine else "engine" if store is not None else "store and engine"
                    )
                    log.error(
                        "%s still unavailable (try %d, %.0f s since start): %s; next try in %g s",
                        what,
                        tries,
                        time.monotonic() - since,
                        self.not_ready,
                        pause,
                    )
        except BaseException:
            if store is not None:
                with contextlib.suppress(Exception):
                    await store.close()
            raise
        log.warning(
            "store and engine answer after %d tries (%.1f s): the gateway serves",
            tries,
            time.monotonic() - since,
        )
        if self._shutdown_by is not None:  # stopping meanwhile
            await store.close()
            return
        try:
            await self._serve(store)
        except Exception as e:
            log.exception("the gateway could not start once its store and engine answered")
            if self.fatal is None:
                self._lost(f"could not start once the store and engine answered: {e}")

    def _not_ready_error(self, why: str) -> GatewayUnavailable | EngineNotReady:
        message = f"the gateway is not ready: {why} (it tries again by itself)"
        engine = self._engine_down
        if engine is not None:
            return EngineNotReady(
                engine.address, engine.reason, message=message, retry_after=STORE_RETRY_MAX
            )
        return GatewayUnavailable(message, retry_after=STORE_RETRY_MAX)

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

    def engine_away(self, why: EngineUnavailable) -> None:
        """The engine did not answer the server's start of the backend, before the
        lifespan: the lifespan does not wait for it once more (a frozen engine would hold
        the first answer for twice ``engine_timeout``), it tries again in the background."""
        self._engine_down = why

    def on_engine(self, ready: Callable[[], Awaitable[None]]) -> None:
        """Await ``ready()`` once an engine that did not answer at start answers (before
        the gateway starts anything on it)."""
        self._on_engine = ready

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
