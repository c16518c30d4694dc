"""The scoped Docker API: an HTTP/1.1 proxy between function containers and the engine.

The gateway starts it on the function network's gateway address (its own port). A container
of a ``docker: scoped`` function finds it in ``DOCKER_HOST``, with its token in the path
(:mod:`swarmless.proxy.tokens`), so the Docker SDK for Python and the ``docker`` CLI work
unchanged inside it.

Each client connection is served by :mod:`swarmless.proxy.relay` (requests read by h11,
relayed to the engine, streams and upgrades passed through); each request is judged by
:mod:`swarmless.proxy.admission` (the caller identified by token, then source address;
the facts looked up on the engine; :func:`swarmless.proxy.policy.check` asked; children
capped per caller atomically).

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
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from swarmless.config import Settings
from swarmless.engine import endpoint
from swarmless.labels import LABEL_GATEWAY, LABEL_KIND
from swarmless.proxy import nodes, policy
from swarmless.proxy.admission import Admission
from swarmless.proxy.children import ChildWatch
from swarmless.proxy.engine_view import EngineView
from swarmless.proxy.http import ClientSide, Incoming
from swarmless.proxy.relay import HEAD_TIMEOUT as HEAD_TIMEOUT
from swarmless.proxy.relay import MAX_BODY as MAX_BODY
from swarmless.proxy.relay import MAX_HEAD, serve_client
from swarmless.proxy.rules import Refused, Verdict
from swarmless.proxy.tokens import CallerTokens
from swarmless.records import ChildOutcome
from swarmless.spec import FunctionSpec

__all__ = ["DockerProxy"]

log = logging.getLogger("swarmless.proxy")

#: Seconds between two looks for orphans (children whose parent's death went unseen).
SWEEP_INTERVAL = 5.0


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
        self._init_common(settings, tokens, spec_of, labels)
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
        #: The engine's /info (its name, for GET /nodes and placement), once asked.
        self._info: dict[str, Any] | None = None
        #: Creates asked for so far, and their count when a sweep last found no child and
        #: none asked for meanwhile (None: not yet). Children are made only through this
        #: API: while the two are equal no child can exist, and the sweep asks nothing.
        self._creates = 0
        self._quiet_at: int | None = None
        #: Who is asking, and may they (the verdict on each request).
        self.admission = Admission(
            settings=settings,
            tokens=tokens,
            spec_of=spec_of,
            engine=self.engine,
            labels=self.labels,
        )

    def _init_common(
        self,
        settings: Settings,
        tokens: CallerTokens,
        spec_of: Callable[[str], FunctionSpec | None],
        labels: Mapping[str, str] | None,
    ) -> None:
        """What every scoped API has, on one engine or a Swarm: who it serves, the labels
        it forces, its server and the tasks it runs."""
        self.settings = settings
        self.tokens = tokens
        self.spec_of = spec_of
        #: Labels forced on every child (the gateway instance, a test session...).
        self.labels = {**(labels or {}), LABEL_GATEWAY: settings.instance}
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[Any]] = set()
        self._host = ""

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str, port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port) and follow the engine's events."""
        await self.engine.remove_children()  # left by a gateway that crashed
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        self._host = host
        bound = self._server.sockets[0].getsockname()
        self.url = f"tcp://{bound[0]}:{bound[1]}"
        self.tokens.docker_url = self.url
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch()), loop.create_task(self._sweep())]
        log.info("scoped Docker API on %s", self.url)

    async def close(self) -> None:
        """Stop listening and remove every child container of this gateway."""
        await self._stop_serving(self.admission)
        await self.children.close()
        with contextlib.suppress(httpx.HTTPError):
            await self.engine.remove_children()
        await self.engine.close()

    async def _stop_serving(self, admission: Admission | None) -> None:
        """Stop listening, let the creates in flight be answered (``admission`` closed
        first: a child the engine was still making would be made after the children were
        removed, and left behind), then end every connection and task of the API."""
        self.tokens.docker_url = None
        if self._server is not None:
            self._server.close()
        if admission is not None:
            await admission.close()
        running = [*self._tasks, *self._background, *self._connections]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- connections -------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio's streams hold a connection's task and the engine's reader only weakly:
        # without a strong reference here a relay is garbage-collected mid-stream.
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        await serve_client(reader, writer, self.admission.decide, self._engine, self._handle)

    async def _handle(
        self, verdict: Verdict, incoming: Incoming, client: ClientSide
    ) -> bool | None:
        """``GET /nodes`` (this engine, as one node) and the placement of a create (it must
        name this engine); the rest goes to the engine."""
        if verdict.rule == "create":
            self._creates += 1
        if verdict.rule not in ("nodes", "create") or not (
            verdict.rule == "nodes" or verdict.placement
        ):
            return None
        if self._info is None:
            r = await self.engine.api.get("/info")
            r.raise_for_status()
            self._info = dict(r.json())
        if verdict.rule == "create":
            why = nodes.single_engine_placement(verdict.placement, str(self._info.get("Name")))
            if why is None:
                return None
            await client.answer(400, {"message": policy.refuse("constraint", why).message})
            return False
        try:
            rows = nodes.filtered([nodes.engine_node(self._info, self._host)], verdict.query)
        except Refused as e:
            await client.answer(400, {"message": policy.refuse(e.rule, e.reason).message})
            return False
        return await nodes.reply(client, 200, rows)

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
        self.admission.forget(cid)
        if cid:
            self.children.parent_died(cid)

    async def _sweep(self) -> None:
        """Orphans (a parent whose death went unseen) are looked for every few seconds,
        while a child may exist: from the start (a gateway of this instance before may
        have left some), until a sweep finds none and no create was asked for meanwhile.
        An idle gateway whose functions make no children asks the engine nothing."""
        before = self._creates  # the count when the previous sweep began
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if not self.may_have_children:
                continue
            creates = self._creates
            with contextlib.suppress(httpx.HTTPError):
                found = await self.children.sweep()
                # None found, and no create asked for since the sweep before this one
                # began (one asked just before this list may not be in the engine yet)
                if not found and self._creates == before:
                    self._quiet_at = before
            before = creates

    @property
    def may_have_children(self) -> bool:
        """Whether a child of this gateway's containers may exist (the sweep looks then)."""
        return self._quiet_at != self._creates
