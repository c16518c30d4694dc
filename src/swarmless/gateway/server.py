"""Serve the gateway with uvicorn: on the public address, and on the functions' network.

Warm containers reach the gateway at the host side of the function network's bridge
(``172.x.0.1``), so when the public address is loopback the gateway also listens there.
Both sockets serve the same app (an engine away at start: the second one once it answers,
before the gateway starts any container). On SIGTERM or SIGINT: the gateway stops taking calls and
drains (its calls in flight finish, or are answered 504 when ``drain_timeout`` runs out),
then uvicorn closes the connections (what is left of ``drain_timeout``, a second at
least, for the last answers to go out), then the lifespan stops the containers: one
timeout for the whole, not one per step.

:func:`run` (what ``swarmless up`` runs) serves on uvloop's event loop (:data:`EVENT_LOOP`);
uvicorn's own ``loop`` setting would not choose it, since the server is awaited in a loop
its caller made.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable

import uvicorn

from swarmless.config import Settings
from swarmless.exceptions import EngineUnavailable
from swarmless.gateway.app import Gateway
from swarmless.gateway.runtime_frames import upgrade_protocol

__all__ = ["EVENT_LOOP", "GatewayServer", "bind", "loop_factory", "run", "serve"]

log = logging.getLogger("swarmless.gateway")

#: The event loop :func:`run` serves on: ``uvloop`` (libuv: a call's reads, writes, timers
#: and wake-ups cost the gateway less CPU than asyncio's selector loop), or ``asyncio``.
EVENT_LOOP = "uvloop"

#: Seconds uvicorn waits, at the least, for the last answers to go out at shutdown.
ANSWERS_GRACE = 1


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose protocol says
    # TCP, and without it every response (headers, then body) waits 40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return host == "localhost"


class _Server(uvicorn.Server):
    """uvicorn, with the gateway's drain first: workers' long polls would hold it open."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Drain before uvicorn closes connections: a worker finishing a call must still
        # reach us with its result (it then gets 410 and exits).
        self.gateway.begin_shutdown()
        await self.gateway.drain()
        # uvicorn's own wait (connections still open: a dashboard's event stream, a
        # client waiting for a result) gets what is left of the drain timeout.
        self.config.timeout_graceful_shutdown = max(
            int(self.gateway.shutdown_left()), ANSWERS_GRACE
        )
        await super().shutdown(sockets)

    async def listen_also(self, sock: socket.socket) -> None:
        """Serve ``sock`` too, as :meth:`startup` serves those it was given."""
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        server = await loop.create_server(create_protocol, sock=sock, backlog=config.backlog)
        self.servers.append(server)


class GatewayServer:
    """Serves one :class:`Gateway` with uvicorn; ``stop()`` may be called from any thread."""

    def __init__(self, gateway: Gateway, *, log_level: str = "warning") -> None:
        self.gateway = gateway
        self.log_level = log_level
        self.port = 0
        self.server: _Server | None = None

    async def serve(self, started: Callable[[Gateway, int], None] | None = None) -> None:
        """Run until SIGINT/SIGTERM (main thread) or ``stop()``."""
        gateway = self.gateway
        settings: Settings = gateway.settings
        # The backend knows the functions' network address; the lifespan's start reuses it.
        # An engine away: the lifespan waits for it, and tells when it answers.
        try:
            await gateway.backend.start()
            engine = True
        except EngineUnavailable as e:
            gateway.engine_away(e)  # the lifespan's start does not wait for it once more
            engine = False
        public = bind(settings.host, settings.port)
        self.port = port = public.getsockname()[1]
        gateway.listening_on(port)
        sockets = [public]
        if _is_loopback(settings.host):
            if engine:
                sockets.extend(self._for_containers(port))
            else:
                gateway.on_engine(lambda: self._listen_for_containers(port))
        config = uvicorn.Config(
            gateway,
            log_level=self.log_level,
            access_log=False,
            timeout_graceful_shutdown=int(gateway.drain_timeout),
            lifespan="on",
            # httptools, plus the runtime's framed connection (gateway/runtime_frames.py).
            http=upgrade_protocol(
                lambda: gateway.active.runtime_api if gateway.active is not None else None
            ),
            # Not uvicorn's to choose: serve() runs in its caller's loop (see run()).
            loop="none",
            timeout_keep_alive=60,
            # The edge (gateway/edge.py) decides whose X-Forwarded-* to believe
            # (trusted_proxies); uvicorn's own rewrite of the peer would decide before it.
            proxy_headers=False,
        )
        self.server = server = _Server(config, gateway)
        gateway.on_fatal(self.stop)

        async def announce() -> None:
            while not server.started and not server.should_exit:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if server.started and started is not None:
                started(gateway, port)

        task = asyncio.create_task(announce())
        try:
            await server.serve(sockets=sockets)
        finally:
            task.cancel()

    def _for_containers(self, port: int) -> list[socket.socket]:
        """The socket containers reach the gateway by (none if it cannot be bound)."""
        ip = self.gateway.backend.runtime_host()
        try:
            return [bind(ip, port)]
        except OSError as e:
            log.error("cannot listen on %s:%d for containers: %s", ip, port, e)
            return []

    async def _listen_for_containers(self, port: int) -> None:
        """The engine answers (it was away at start): listen for containers now."""
        server = self.server
        if server is None:
            return
        while not server.started and not server.should_exit:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # uvicorn makes its servers right after the lifespan
        for sock in self._for_containers(port):
            await server.listen_also(sock)

    @property
    def started(self) -> bool:
        return self.server is not None and self.server.started

    def stop(self) -> None:
        """Ask the server to shut down gracefully (drain, then stop containers)."""
        if self.server is not None:
            self.server.should_exit = True


async def serve(
    gateway: Gateway,
    *,
    started: Callable[[Gateway, int], None] | None = None,
    log_level: str = "warning",
) -> None:
    """Run the gateway until SIGINT/SIGTERM; ``started`` is called once it answers."""
    await GatewayServer(gateway, log_level=log_level).serve(started)


def loop_factory(name: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop ``name`` (default :data:`EVENT_LOOP`) makes: uvloop's, or asyncio's
    when asked for, or when uvloop cannot be imported (a platform without its wheel)."""
    if (name or EVENT_LOOP) == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: the gateway runs on asyncio's event loop")
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(
    gateway: Gateway,
    *,
    started: Callable[[Gateway, int], None] | None = None,
    log_level: str = "warning",
    loop: str | None = None,
) -> None:
    """:func:`serve` on a new event loop of its own (:func:`loop_factory`), until
    SIGINT/SIGTERM: what ``swarmless up`` runs. (uvicorn's ``loop`` setting only applies to
    ``uvicorn.run``; a server awaited in a running loop keeps that loop.)"""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(serve(gateway, started=started, log_level=log_level))
