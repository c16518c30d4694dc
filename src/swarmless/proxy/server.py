"""The scoped Docker API: an HTTP/1.1 proxy between function containers and the engine.

The gateway starts it on the function network's gateway address (its own port). A container
of a ``docker: scoped`` function finds it in ``DOCKER_HOST``, with its token in the path
(:mod:`swarmless.proxy.tokens`), so the Docker SDK for Python and the ``docker`` CLI work
unchanged inside it.

Each request on a client connection is read whole by h11 (:mod:`swarmless.proxy.http`:
strict framing, bounded head and body), the caller identified (token, then source
address), the facts the policy needs looked up on the engine, and
:func:`swarmless.proxy.policy.check` asked. A refusal is answered here, 403 (404 for a
container that is not the caller's, exactly as for one that does not exist) with
``{"message": "... (rule NAME)"}``, what the Docker SDK shows. An allowed request is
rebuilt from the verdict and sent alone on a fresh connection to the engine; the answer
is relayed as it comes, so streams (logs, wait, events) flow. Keep-alive and pipelining
work: the next request is read only once an answer is complete. Attach and exec start
switch to a raw stream only when the client asked for ``Upgrade: tcp`` and the engine
answered 101; then bytes are relayed both ways and a half-close is passed on (stdin EOF).

Children are capped per caller atomically: a create reserves its place under the caller's
lock (counting the children on the engine plus the creates in flight) and gives it back
once the engine has answered. Exited children stop counting towards ``max_children``;
at most as many again may be kept exited before the caller has to remove some.

Children outlive their parent for a while: the proxy follows the engine's ``start`` and
``die`` events of the gateway's containers (:mod:`swarmless.proxy.children`). The children
of a container that exits (a one-shot call that ends, times out or crashes; a warm worker
that stops) are removed once its function's ``children_timeout`` has passed (0: at once);
orphans whose parent's death went unseen are found every few seconds; every child's end is
reported to the record of the call that made it (``on_child``); and all children are
removed when the gateway stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import h11
import httpx

from swarmless.config import Settings
from swarmless.engine import endpoint
from swarmless.labels import LABEL_GATEWAY, LABEL_KIND
from swarmless.proxy import policy
from swarmless.proxy.children import ChildWatch
from swarmless.proxy.engine_view import EngineView
from swarmless.proxy.http import (
    BadRequest,
    ClientGone,
    ClientSide,
    EngineExchange,
    Incoming,
    open_engine,
    splice,
)
from swarmless.proxy.policy import Caller, ProxyRequest, Target, Verdict
from swarmless.proxy.tokens import PATH_PREFIX, CallerTokens, Grant
from swarmless.records import ChildOutcome
from swarmless.spec import FunctionSpec

__all__ = ["DockerProxy"]

log = logging.getLogger("swarmless.proxy")

#: Limits on what a client sends: the request head, and a body (a tar for archive PUT).
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
#: How long a request may take to arrive, and a kept-alive connection may sit idle.
HEAD_TIMEOUT = 30.0
SWEEP_INTERVAL = 5.0
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class DockerProxy:
    """The scoped Docker API of one gateway (``start`` it, then ``close`` it)."""

    def __init__(
        self,
        *,
        settings: Settings,
        tokens: CallerTokens,
        spec_of: Callable[[str], FunctionSpec | None],
        images: Callable[[], Iterable[str]],
        labels: Mapping[str, str] | None = None,
        on_child: Callable[[ChildOutcome], None] | None = None,
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.spec_of = spec_of
        #: Labels forced on every child (the gateway instance, a test session...).
        self.labels = {**(labels or {}), LABEL_GATEWAY: settings.instance}
        self.url = ""
        engine = endpoint(settings.docker_host)
        if engine.tls:
            raise ValueError(
                f"the scoped Docker API cannot reach a TLS engine ({engine.address}); "
                "run the gateway beside the engine's Unix socket"
            )
        self._engine = engine
        #: Look-ups and removals on the engine (this instance's containers only).
        self.engine = EngineView(
            engine,
            instance=settings.instance,
            images=lambda: [*images(), *settings.proxy_images],
        )
        #: Children's lives after their parent's; ``on_child`` hears how each one ended.
        self.children = ChildWatch(self.engine, report=on_child)
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[Any]] = set()
        self._callers: dict[str, tuple[str, frozenset[str]]] = {}
        #: Per caller container: creates in flight, and the lock that counts them.
        self._reserved: dict[str, int] = {}
        self._create_locks: dict[str, asyncio.Lock] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str, port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port) and follow the engine's events."""
        await self.engine.remove_children()  # left by a gateway that crashed
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        bound = self._server.sockets[0].getsockname()
        self.url = f"tcp://{bound[0]}:{bound[1]}"
        self.tokens.docker_url = self.url
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch()), loop.create_task(self._sweep())]
        log.info("scoped Docker API on %s", self.url)

    async def close(self) -> None:
        """Stop listening and remove every child container of this gateway."""
        self.tokens.docker_url = None
        if self._server is not None:
            self._server.close()
        running = [*self._tasks, *self._background, *self._connections]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self.children.close()
        with contextlib.suppress(httpx.HTTPError):
            await self.engine.remove_children()
        await self.engine.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- engine look-ups ---------------------------------------------------------------

    async def _caller(self, grant: Grant, peer: str) -> Caller | Verdict:
        spec = self.spec_of(grant.function)
        if spec is None:
            return policy.refuse("caller", f"function {grant.function!r} is not deployed")
        if spec.docker != "scoped":
            return policy.refuse(
                "docker-access", f"function {spec.name!r} has docker: {spec.docker}, not scoped"
            )
        found = self._callers.get(grant.token)
        if found is None:
            key, value = grant.label
            rows = await self.engine.list(f"{key}={value}", running=True)
            if len(rows) != 1:
                return policy.refuse("caller", "the container of this token is not running")
            networks = (rows[0].get("NetworkSettings") or {}).get("Networks") or {}
            ips = frozenset(n["IPAddress"] for n in networks.values() if n.get("IPAddress"))
            found = self._callers[grant.token] = (str(rows[0]["Id"]), ips)
        container, ips = found
        if peer not in ips:
            return policy.refuse(
                "caller", f"this token belongs to another container than the one at {peer}"
            )
        return Caller(
            container=container,
            function=spec.name,
            network=spec.network or self.settings.network,
            memory=spec.memory or self.settings.proxy_memory,
            cpus=spec.cpus or self.settings.proxy_cpus,
            labels=self.labels,
            call_id=grant.call_id,
            children_timeout=spec.children_timeout,
        )

    @contextlib.asynccontextmanager
    async def decide(self, incoming: Incoming, peer: str) -> AsyncIterator[Verdict]:
        """Identify the caller, look up the facts, ask the policy.

        A create that is allowed holds its place among the caller's children until the
        ``async with`` block (which forwards it) ends.
        """
        path, _, query = incoming.target.partition("?")
        if not path.startswith(PATH_PREFIX):
            yield policy.refuse(
                "caller", "no swarmless token in the path: use the DOCKER_HOST swarmless set"
            )
            return
        token, _, rest = path[len(PATH_PREFIX) :].partition("/")
        grant = self.tokens.lookup(token) if _TOKEN.match(token) else None
        if grant is None:
            yield policy.refuse("caller", "unknown or expired swarmless token")
            return
        caller = await self._caller(grant, peer)
        if isinstance(caller, Verdict):
            yield caller
            return
        path = "/" + rest
        r = policy.route(incoming.method, path)
        if isinstance(r, Verdict):
            yield r
            return
        target: Target | None = None
        images: dict[str, str] = {}
        image_labels: dict[str, dict[str, str]] = {}
        if r.endpoint in ("create", "pull", "image-inspect"):
            images, image_labels = await self.engine.allowed_images()
        elif r.ref is not None:
            exec_route = r.endpoint.startswith("exec-") and r.endpoint != "exec-create"
            target = await (
                self.engine.exec_container(r.ref) if exec_route else self.engine.container(r.ref)
            )
        request = ProxyRequest(
            incoming.method,
            path,
            query,
            incoming.body,
            caller,
            target,
            images,
            image_labels=image_labels,
        )
        if r.endpoint != "create":
            yield self._logged(policy.check(request), caller)
            return
        who = caller.container
        lock = self._create_locks.setdefault(who, asyncio.Lock())
        async with lock:
            live, exited = await self.engine.children(who)
            reserved = self._reserved.get(who, 0)
            request = dataclasses.replace(request, children=live + reserved, exited=exited)
            verdict = self._logged(policy.check(request), caller)
            if verdict.allowed:
                self._reserved[who] = reserved + 1
        if not verdict.allowed:
            yield verdict
            return
        try:
            yield verdict
        finally:
            left = self._reserved.get(who, 1) - 1
            if left > 0:
                self._reserved[who] = left
            else:
                self._reserved.pop(who, None)

    @staticmethod
    def _logged(verdict: Verdict, caller: Caller) -> Verdict:
        if not verdict.allowed:
            log.info(
                "refused a request of %s (%s): %s",
                caller.function,
                caller.container[:12],
                verdict.message,
            )
        return verdict

    # -- connections -------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio's streams hold a connection's task and the engine's reader only weakly:
        # without a strong reference here a relay is garbage-collected mid-stream.
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        peer = writer.get_extra_info("peername")
        client = ClientSide(reader, writer, max_head=MAX_HEAD, max_body=MAX_BODY)
        try:
            while True:
                try:
                    incoming = await client.next_request(HEAD_TIMEOUT)
                except BadRequest as e:
                    message = f"swarmless proxy refused this request: {e} (rule http)"
                    await client.answer(e.status, {"message": message})
                    return
                if incoming is None:
                    return
                if not await self._one(client, incoming, str(peer[0]) if peer else ""):
                    return
                if not client.next_cycle():
                    return
        except (ClientGone, ConnectionError, OSError, TimeoutError, h11.ProtocolError):
            pass
        except Exception:
            log.exception("scoped Docker API: unexpected error")
        finally:
            writer.close()

    async def _one(self, client: ClientSide, incoming: Incoming, peer: str) -> bool:
        """Answer one request; False when the connection cannot go on."""
        try:
            async with self.decide(incoming, peer) as verdict:
                if not verdict.allowed:
                    await client.answer(verdict.status, {"message": verdict.message})
                    return False
                if verdict.hijack and not incoming.wants_upgrade:
                    message = policy.refuse(
                        "http", "attach and exec start need 'Connection: Upgrade, Upgrade: tcp'"
                    ).message
                    await client.answer(400, {"message": message})
                    return False
                return await self._forward(verdict, incoming, client)
        except (httpx.HTTPError, OSError, h11.ProtocolError) as e:
            if isinstance(e, ConnectionError) and client.writer.is_closing():
                raise
            await client.answer(503, {"message": f"swarmless proxy: engine error: {e}"})
            return False

    async def _forward(self, verdict: Verdict, incoming: Incoming, client: ClientSide) -> bool:
        agent = (incoming.header("user-agent") or ["swarmless-proxy"])[0][:200]
        headers = [("user-agent", agent)]
        if verdict.hijack:
            headers += [("connection", "Upgrade"), ("upgrade", "tcp")]
        else:
            headers.append(("connection", "close"))
        if verdict.body is not None:
            kind = "application/x-tar" if verdict.rule == "archive-put" else "application/json"
            headers.append(("content-type", kind))
        exchange = await open_engine(self._engine)
        try:
            await exchange.send(verdict.method, verdict.url(), headers, verdict.body)
            status, answer = await exchange.answer()
            log.debug("%s %s -> %s", verdict.method, verdict.url()[:200], status)
            if exchange.switched:
                to_engine = client.switch(answer)
                await splice(client, exchange, to_engine, exchange.leftover)
                return False
            await client.start(status, answer)
            watch = asyncio.ensure_future(client.watch())
            relay = asyncio.ensure_future(self._relay(exchange, client))
            try:
                done, _ = await asyncio.wait({watch, relay}, return_when=asyncio.FIRST_COMPLETED)
                if relay not in done:
                    return False  # the client went away in the middle of a stream
                relay.result()
            finally:
                watch.cancel()
                relay.cancel()
                await asyncio.gather(watch, relay, return_exceptions=True)
            return not verdict.hijack
        finally:
            exchange.close()

    @staticmethod
    async def _relay(exchange: EngineExchange, client: ClientSide) -> None:
        async for chunk in exchange.body():
            await client.data(chunk)
        await client.end()

    # -- children outlive their parent, for children_timeout ----------------------------

    async def _watch(self) -> None:
        filters = json.dumps(
            {
                "type": ["container"],
                "event": ["start", "die"],
                "label": [f"{LABEL_GATEWAY}={self.settings.instance}"],
            }
        )
        while True:
            try:
                async with self.engine.api.stream(
                    "GET", "/events", params={"filters": filters}, timeout=None
                ) as stream:
                    async for line in stream.aiter_lines():
                        if line.strip():
                            self._event(json.loads(line))
            except (httpx.HTTPError, ValueError) as e:
                log.debug("event stream ended (%s); following again", e)
            await asyncio.sleep(1.0)

    def _event(self, event: dict[str, Any]) -> None:
        actor = event.get("Actor") or {}
        attrs: dict[str, str] = actor.get("Attributes") or {}
        action = str(event.get("Action") or event.get("status") or "")
        if attrs.get(LABEL_KIND) == "child":
            self.children.child_event(action, event)
            return
        if action != "die":
            return
        self.tokens.revoke_container(attrs)
        cid = str(actor.get("ID") or event.get("id") or "")
        for token, (container, _) in list(self._callers.items()):
            if container == cid:
                self._callers.pop(token, None)
        if cid:
            self.children.parent_died(cid)

    async def _sweep(self) -> None:
        """Orphans (a parent whose death went unseen) are looked for every few seconds."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            with contextlib.suppress(httpx.HTTPError):
                await self.children.sweep()


async def start_proxy(
    settings: Settings,
    backend: Any,
    functions: Mapping[str, tuple[FunctionSpec, int]],
    tokens: CallerTokens,
    on_child: Callable[[ChildOutcome], None] | None = None,
) -> DockerProxy | None:
    """Start the scoped Docker API beside ``backend`` when it runs its containers on one
    engine (``Backend.scoped_docker_api``); None otherwise.

    The allowlist is the images of the deployed ``functions`` (a live mapping: name ->
    spec and version) plus ``settings.proxy_images``. The backend gets ``tokens`` from
    the gateway's wiring (``Backend.use_caller_tokens``), not from here. ``on_child`` hears
    how each child of a one-shot or cgi call ended (for the call's record).
    """
    if not backend.scoped_docker_api:
        return None

    def spec_of(name: str) -> FunctionSpec | None:
        found = functions.get(name)
        return found[0] if found else None

    def images() -> list[str]:
        return [s.image for s, _ in functions.values() if s.image]

    proxy = DockerProxy(
        settings=settings,
        tokens=tokens,
        spec_of=spec_of,
        images=images,
        labels=backend.extra_labels,
        on_child=on_child,
    )
    try:
        await proxy.start(backend.runtime_host(), settings.proxy_port)
    except (OSError, httpx.HTTPError) as e:
        log.error("the scoped Docker API could not start: %s", e)
        await proxy.close()
        return None
    return proxy
