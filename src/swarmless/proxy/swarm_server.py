"""The scoped Docker API on a Swarm: children as one-shot services, on any node.

The gateway drives a Swarm manager; a ``docker: scoped`` function's task, on whichever
node, reaches the gateway the way its warm workers do (the gateway's address on its route
to the manager: :meth:`SwarmBackend.runtime_host`), so the proxy listens there and the
backend's caller grants put ``DOCKER_HOST=tcp://<that address>:<port>/_swarmless/<token>``
into the function's environment, as on one engine.

Requests are read and judged as on one engine (:mod:`swarmless.proxy.relay`,
:mod:`swarmless.proxy.admission` over a :class:`~swarmless.proxy.swarm_view.SwarmView`:
the caller's token and its node's address, the same policy, the cap reserved under the
caller's lock) and answered by :class:`~swarmless.proxy.swarm_api.SwarmAPI`, which
emulates the container API over services; nothing is forwarded to the manager as sent.

Children's lives: every second :meth:`SwarmProxy.sweep` lists this instance's services.
A child whose task ended is reported once to the record of the call that made it
(``on_child``); one created with ``AutoRemove`` is then removed. A child whose parent is
not running any more (its task ended, its service was removed) is removed once its
``children_timeout`` has passed since the sweep first saw the parent gone (a running one is
killed, and its report says so). All of this instance's children are removed when the
proxy starts (a crashed gateway's) and when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from swarmless.config import Settings
from swarmless.engine import connect, endpoint
from swarmless.labels import LABEL_GATEWAY, LABEL_PARENT, LABEL_PARENT_CALL
from swarmless.proxy.admission import Admission
from swarmless.proxy.children import children_timeout
from swarmless.proxy.relay import MAX_HEAD, serve_client
from swarmless.proxy.server import DockerProxy
from swarmless.proxy.swarm_api import SwarmAPI
from swarmless.proxy.swarm_spec import LABEL_AUTO_REMOVE, LOST, TERMINAL, Child, is_child
from swarmless.proxy.swarm_view import SwarmView, latest
from swarmless.proxy.tokens import CallerTokens
from swarmless.records import ChildOutcome
from swarmless.registry import credentials
from swarmless.spec import FunctionSpec

__all__ = ["SwarmProxy"]

log = logging.getLogger("swarmless.proxy")

#: Seconds between two looks at the children (their ends, their parents').
SWEEP_INTERVAL = 1.0
#: Children whose outcome was reported, remembered at most.
MAX_TRACKED = 10_000


class SwarmProxy(DockerProxy):
    """The scoped Docker API of a gateway on a Swarm (``start`` it, then ``close`` it)."""

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
        # Not DockerProxy.__init__: that one drives one engine's socket, this the manager
        # through the Docker SDK (TLS included).
        self._init_common(settings, tokens, spec_of, labels)
        self._images = images
        self._report = on_child
        self._engine = endpoint(settings.docker_host)  # never dialled: SwarmAPI answers
        self.view: SwarmView | None = None
        self.swarm: SwarmAPI | None = None
        #: Child ids whose outcome was reported (bounded, oldest forgotten first).
        self._reported: dict[str, None] = {}
        #: Parent service id -> when a sweep first found it not running.
        self._dead: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def _connect(self) -> SwarmView:
        client = connect(self.settings.docker_host, timeout=self.settings.engine_timeout)
        auth = credentials(self.settings)
        if auth is not None and self.settings.registry:
            with contextlib.suppress(Exception):  # the backend says so if this fails
                client.api.login(
                    auth["username"],
                    auth["password"],
                    registry=self.settings.registry.partition("/")[0],
                )
        images = self._images
        return SwarmView(
            client,
            instance=self.settings.instance,
            images=lambda: [*images(), *self.settings.proxy_images],
        )

    async def start(self, host: str, port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port) and follow the children."""
        self.view = view = await asyncio.to_thread(self._connect)
        self.swarm = SwarmAPI(view, spec_of=self.spec_of, gone=self._gone)
        self.admission = Admission(
            settings=self.settings,
            tokens=self.tokens,
            spec_of=self.spec_of,
            engine=view,
            labels=self.labels,
        )
        await self._remove_all()  # left by a gateway that crashed
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        self._host = host
        bound = self._server.sockets[0].getsockname()
        self.url = f"tcp://{bound[0]}:{bound[1]}"
        self.tokens.docker_url = self.url
        self._tasks = [asyncio.get_running_loop().create_task(self._sweep())]
        log.info("scoped Docker API for a Swarm on %s", self.url)

    async def close(self) -> None:
        """Stop listening and remove every child service of this gateway."""
        await self._stop_serving(self.admission if self.view is not None else None)
        if self.view is not None:
            with contextlib.suppress(Exception):
                await self._remove_all()
            await self.view.close()

    async def _remove_all(self) -> None:
        assert self.view is not None
        rows = await self.view.child_rows()
        await asyncio.gather(*(self._end(c, "the gateway stopped") for c in rows))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        assert self.swarm is not None
        await serve_client(reader, writer, self.admission.decide, self._engine, self.swarm.handle)

    # -- children's lives ------------------------------------------------------------------

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep()
            except Exception as e:  # the manager may be briefly away: look again
                log.debug("children's sweep failed: %s", e)

    async def sweep(self) -> None:
        """Report children that ended; remove auto-removed ones, and those whose parent is
        gone once their ``children_timeout`` has passed."""
        view = self.view
        assert view is not None
        services = await view.run(
            view.api.services, filters={"label": [f"{LABEL_GATEWAY}={self.settings.instance}"]}
        )
        children = [s for s in services if is_child(s)]
        if not children:
            self._dead.clear()
            return
        by_id = {str(s["ID"]): s for s in services}
        parents = {str((s["Spec"].get("Labels") or {}).get(LABEL_PARENT, "")) for s in children}
        ids = [str(s["ID"]) for s in children] + [p for p in parents if p in by_id]
        tasks = await view.run(view.api.tasks, filters={"service": ids})
        now = time.monotonic()
        alive = set()
        for parent in parents:
            task = latest([t for t in tasks if t.get("ServiceID") == parent])
            state = ((task or {}).get("Status") or {}).get("State")
            if parent not in by_id and await view.run(view.inspect, parent) is not None:
                continue  # created just now: the manager lists a service a while after
            if parent in by_id and state not in TERMINAL:
                alive.add(parent)
            elif parent not in self._dead:
                self._dead[parent] = now
                self.admission.forget(parent)
                view.forget(parent)
        self._dead = {p: t for p, t in self._dead.items() if p in parents and p not in alive}
        alive |= parents - set(self._dead)
        ending = []
        for service in children:
            child = await view.read(service, tasks)
            parent = child.labels.get(LABEL_PARENT, "")
            if child.ended:
                self._reported_once(child)
            if parent not in alive:
                if now >= self._dead[parent] + children_timeout(child.labels):
                    ending.append(self._end(child, "its caller exited"))
            elif child.ended and child.labels.get(LABEL_AUTO_REMOVE) == "true":
                ending.append(self._end(child, ""))
        await asyncio.gather(*ending)

    async def _end(self, child: Child, why: str) -> None:
        """Remove a child (killing it if it runs: its report says so)."""
        assert self.view is not None
        if child.started and not child.ended and why:
            timeout = children_timeout(child.labels)
            after = f"{timeout:g}s after {why} (children_timeout)" if timeout else f"when {why}"
            self._reported_once(
                child,
                killed=f"child container {child.id[:12]} ({child.container.get('Image', '?')}) "
                f"was still running {after}: killed",
            )
        await self.view.remove(child.id)

    def _gone(self, child: Child) -> None:
        """The caller removed ``child``."""
        if child.ended:
            self._reported_once(child)
        elif child.started:
            self._reported_once(child, killed=f"child container {child.id[:12]} removed running")

    def _reported_once(self, child: Child, killed: str | None = None) -> None:
        if child.id in self._reported:
            return
        if len(self._reported) >= MAX_TRACKED:
            self._reported.pop(next(iter(self._reported)))
        self._reported[child.id] = None
        call = child.labels.get(LABEL_PARENT_CALL)
        if not call or self._report is None:
            return
        started, finished = child.times()
        if killed:
            finished = time.time()
        code = LOST if killed else child.exit_code
        error = killed or child.error or None
        if error is None and code:
            error = f"child container {child.id[:12]} exited with status {code}"
        self._report(
            ChildOutcome(
                call_id=call,
                container=child.id[:12],
                image=str(child.container.get("Image") or "") or None,
                exit_code=code,
                started_at=int(started * 1000) if started else None,
                finished_at=int(finished * 1000),
                duration_ms=(finished - started) * 1000 if started else None,
                killed=killed is not None,
                error=error,
            )
        )
