"""The active gateway: its parts, wired once, and their life.

Only the replica that holds the lease runs these (:mod:`swarmless.gateway.replicas`).
:class:`ActiveGateway` builds them in one place and hands each the interfaces of its
collaborators; afterwards they ask each other through methods, never by writing each
other's attributes::

    HTTP call --> edge (gateway/app.py) --> Dispatcher --> WarmPool <-- RuntimeAPI <-- warm
                                             |     \\--> OneShotCalls --> Backend
    AsyncRunner (durable queue) -------------/        (records, logs: Recorder)
    Scheduler --on_fire--> AsyncRunner.wake_up
    Sweeper (retention) --> Store: deletes old records, logs, results, dead letters
    Reconciler (one per warm pool): plans, then starts/stops containers --> Backend
    Backend --subscribe--> WorkerRegistry (a container died: its calls, or a crash)
    Backend --watch_engine--> ActiveGateway (the engine went away, came back: resync)
    RuntimeAPI --> WorkerRegistry (whose token) and Recorder (a worker's logs)
    Backend <--use_caller_tokens-- CallerTokens <-- DockerProxy (scoped Docker API)
    DockerProxy --on_child--> Recorder (how a call's child containers ended)

Start: give the backend the caller tokens, start the scoped Docker API, remove containers
a previous gateway left, load the functions, a reconciler per warm function, the async
runner and the schedules. Stop: stop claiming async calls, let calls in flight finish
(bounded: those still running then are answered 504), cancel the loops, stop every
container, then the proxy.

When the engine stops answering, calls that need a container are refused at once (503
``engine_unavailable``), async calls are still queued (durably, by the routes) but not
claimed, and no container is started. When it answers again, the gateway lists its
containers: workers that died meanwhile are forgotten (their calls fail, or run again when
the function is idempotent), containers nobody owns any more are removed, the reconcilers
and the async runner are woken.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from swarmless.backends.base import Backend
from swarmless.config import Settings
from swarmless.dispatch.async_runner import AsyncRunner
from swarmless.dispatch.background import Background
from swarmless.dispatch.dispatcher import Dispatcher
from swarmless.dispatch.metrics import Metrics
from swarmless.dispatch.oneshot import OneShotCalls
from swarmless.dispatch.recorder import Recorder
from swarmless.dispatch.scheduler import Scheduler
from swarmless.dispatch.workers import WorkerRegistry
from swarmless.exceptions import GatewayUnavailable, SwarmlessError
from swarmless.gateway.callbacks import CallbackPolicy
from swarmless.gateway.runtime_api import RuntimeAPI
from swarmless.proxy import CallerTokens, DockerProxy, start_proxy
from swarmless.scaling.reconciler import Reconciler
from swarmless.scaling.settings import ScalingSettings
from swarmless.store import Store, Sweeper

__all__ = ["ActiveGateway"]

log = logging.getLogger("swarmless.gateway")

#: How often the async queue's counts (metrics, ``ls``, the queue_size check) are read.
COUNTS_INTERVAL = 2.0
#: Seconds past the runtime API's long poll after which an idle ready worker that has not
#: polled is checked against the engine.
SILENT_GRACE = 10.0
#: Seconds the async runner gets, at the least, to write the outcome of its calls at stop.
RUNNER_GRACE = 1.0
#: Seconds after the engine came back when the gateway looks for containers nobody owns
#: once more (requests a frozen engine took in run when it thaws).
RESYNC_AGAIN = 10.0
#: Seconds between two tries to load the functions from a store that went away (doubling).
LOAD_RETRY_MIN = 0.5
LOAD_RETRY_MAX = 10.0


class ActiveGateway:
    """What the active replica runs: the dispatcher and its runtime API, the scoped Docker
    API, a reconciler per warm function, the async runner and the schedules."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        backend: Backend,
        metrics: Metrics,
        callers: CallerTokens,
        callbacks: CallbackPolicy,
        runtime_url: str,
        scaling: ScalingSettings,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.callers = callers
        #: The autoscaler's windows and thresholds, for every reconciler.
        self.scaling = scaling
        background = Background()
        recorder = self._recorder = Recorder(store, background)
        self.workers = WorkerRegistry(backend, background)
        self._background = background
        backend.subscribe(self.workers.container_exited)
        backend.watch_engine(self._engine_changed)
        self.dispatcher = Dispatcher(
            store=store,
            backend=backend,
            workers=self.workers,
            oneshot=OneShotCalls(backend, recorder, runtime_url=runtime_url),
            recorder=recorder,
            background=background,
            metrics=metrics,
            runtime_url=runtime_url,
        )
        self.runtime_api = RuntimeAPI(self.workers, recorder)
        self.runner = AsyncRunner(
            self.dispatcher, store, owner=settings.instance, callbacks=callbacks
        )
        self.scheduler = Scheduler(store, self.dispatcher.functions, on_fire=self.runner.wake_up)
        self.sweeper = Sweeper(store, settings.retention)
        metrics.watch_store(store.stats)
        self.proxy: DockerProxy | None = None
        self._reconcilers: dict[str, Reconciler] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def reconcilers(self) -> Mapping[str, Reconciler]:
        """The reconciler of each warm function."""
        return self._reconcilers

    async def start(self) -> None:
        """Containers, queues, autoscalers, the async runner and the schedules."""
        self.backend.use_caller_tokens(self.callers)
        self.proxy = await start_proxy(
            self.settings,
            self.backend,
            self.dispatcher.functions,
            self.callers,
            on_child=self._recorder.child_ended,
        )
        await self._remove_leftovers()
        await self._load()
        for name in self.dispatcher.pools:
            self.start_reconciler(name)
        loop = asyncio.get_running_loop()
        self._tasks["<async>"] = loop.create_task(self.runner.run())
        self._tasks["<schedules>"] = loop.create_task(self.scheduler.run())
        self._tasks["<retention>"] = loop.create_task(self.sweeper.run())
        self._tasks["<counts>"] = loop.create_task(self._refresh_counts())

    async def _load(self) -> None:
        """Load the functions; a store that went away since the lease was taken is tried
        again (a bounded backoff, a line each try) rather than ending the gateway."""
        pause, tries = LOAD_RETRY_MIN, 0
        while True:
            try:
                await self.dispatcher.load()
                return
            except GatewayUnavailable as e:
                tries += 1
                log.error(
                    "cannot load the functions (try %d): %s; next try in %g s",
                    tries,
                    e.message,
                    pause,
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, LOAD_RETRY_MAX)

    async def _remove_leftovers(self) -> None:
        """Containers of a previous gateway (a crash, a kill) cannot be reached: remove them."""
        found = await self.backend.list_containers()
        if found:
            log.info("removing %d container(s) left by a previous gateway", len(found))
        await asyncio.gather(
            *(self.backend.stop_container(c.id) for c in found), return_exceptions=True
        )
        await self.backend.remove_leftovers()

    async def _refresh_counts(self) -> None:
        while True:
            await self.runner.refresh_counts()
            await asyncio.sleep(COUNTS_INTERVAL)

    # -- reconcilers ---------------------------------------------------------------------

    def start_reconciler(self, name: str) -> None:
        """Start (or wake) the reconciler of warm function ``name``."""
        pool = self.dispatcher.pools[name]
        old = self._reconcilers.get(name)
        if old is not None and old.pool is pool and not self._tasks[name].done():
            old.wake()
            return
        rec = Reconciler(
            self.dispatcher,
            pool,
            settings=self.scaling,
            silent_after=self.runtime_api.long_poll + SILENT_GRACE,
        )
        self._reconcilers[name] = rec
        self._tasks[name] = asyncio.get_running_loop().create_task(rec.run())

    def stop_reconciler(self, name: str) -> None:
        """Stop the reconciler of a removed function."""
        self._reconcilers.pop(name, None)
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    # -- the engine ------------------------------------------------------------------------

    def _engine_changed(self, down: str | None) -> None:
        if down is not None:
            self.dispatcher.engine_lost(down)
        else:
            self._background.spawn(self._resync())

    async def _resync(self) -> None:
        """The engine answers again: find what happened to the containers meanwhile. And
        look once more :data:`RESYNC_AGAIN` seconds later: what a frozen engine took in and
        did not answer (a create whose call gave up) runs when it thaws, maybe after the
        first look."""
        for look in range(2):
            if look:
                await asyncio.sleep(RESYNC_AGAIN)
                if self.backend.engine_down is not None:
                    return  # gone again: its return looks again
            asked = time.monotonic()
            try:
                found = await self.backend.list_containers()
            except SwarmlessError as e:  # gone again: the next reconnect tries again
                log.warning("could not list the containers after the engine came back: %s", e)
                return
            orphans = self.dispatcher.resync(found, asked=asked)
            if orphans:
                log.warning("removing %d container(s) nobody owns after the outage", len(orphans))
            await asyncio.gather(
                *(self.backend.stop_container(c) for c in orphans), return_exceptions=True
            )
            self.runner.wake_up()

    # -- what the gateway shows ----------------------------------------------------------

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Containers and calls per function, async queue included (metrics, ``ls``)."""
        snap = self.dispatcher.snapshot()
        for name, counts in snap.items():
            counts.update(self.runner.counts(name))
        return snap

    # -- shutdown ------------------------------------------------------------------------

    def begin_shutdown(self) -> None:
        """Stop taking calls; tell every worker to finish what it holds and exit."""
        self.runner.stop_claiming()
        self.dispatcher.begin_shutdown()

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for the calls in flight to finish."""
        await self.dispatcher.drain(timeout)

    async def stop(self, timeout: float) -> None:
        """Let calls finish (for ``timeout`` at most: those still running then are answered
        504), stop the async runner (once it wrote their outcome) and the loops, stop every
        container, then the scoped Docker API."""
        end = time.monotonic() + timeout
        self.begin_shutdown()
        await self.dispatcher.drain(timeout)
        await self.runner.stop(max(end - time.monotonic(), RUNNER_GRACE))
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.dispatcher.close()
        if self.proxy is not None:  # after the workers: their children go with them
            await self.proxy.close()
