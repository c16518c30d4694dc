"""The reconciler: applies the autoscaler's decisions to one warm pool through the backend.

Once a second (and at once when a call finds no container) it observes the pool, asks the
pure policy (:mod:`swarmless.scaling.policy`) how many containers the function wants, and
acts: starts the missing ones in parallel, drains the surplus (idle ones first), retires
the containers of an older version once one of the new version is ready (updates without
failed requests), and kills containers that overstay a drain or never become ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from swarmless.backends.base import WorkerLaunch
from swarmless.dispatch.pool import WarmPool, Worker
from swarmless.exceptions import SwarmlessError
from swarmless.scaling.policy import Autoscaler, Decision, Observation, ScalingSpec
from swarmless.spec import FunctionSpec

if TYPE_CHECKING:
    from swarmless.dispatch.dispatcher import Dispatcher

__all__ = ["Reconciler", "scaling_spec"]

log = logging.getLogger("swarmless.scaling")

#: A container that has not asked for work after this long is considered broken.
START_TIMEOUT = 60.0
#: With ``paused_buffer``, a ready container idle this long is frozen.
PAUSE_AFTER = 2.0


def scaling_spec(spec: FunctionSpec) -> ScalingSpec:
    """The policy's knobs from a function spec."""
    return ScalingSpec(
        concurrency=spec.concurrency,
        min_containers=spec.min_containers,
        max_containers=spec.max_containers,
        idle_timeout=spec.idle_timeout,
        buffer=spec.buffer,
        stable_window=min(60.0, max(spec.idle_timeout, 6.0)),
        scale_down_delay=min(10.0, spec.idle_timeout),
    )


class Reconciler:
    """Keeps one warm pool at the size its autoscaler wants."""

    def __init__(self, dispatcher: Dispatcher, pool: WarmPool, *, interval: float = 1.0) -> None:
        self.dispatcher = dispatcher
        self.pool = pool
        self.interval = interval
        self.scaler = Autoscaler()
        self.pinned: int | None = None
        self.last: Decision | None = None
        self._draining_since: dict[str, float] = {}
        self._thawing: set[str] = set()

    async def run(self) -> None:
        """Reconcile until cancelled (or the pool's function is removed)."""
        pool = self.pool
        while self.installed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pool.wake.wait(), self.interval)
            pool.wake.clear()
            if not self.installed:  # redeployed in another mode, or removed, meanwhile
                break
            try:
                self.step(time.monotonic())
            except Exception:  # a bad step must not stop scaling for good
                log.exception("reconcile %s failed", pool.spec.name)
        for w in list(pool.workers.values()):
            pool.retire(w)

    @property
    def installed(self) -> bool:
        """True while this pool is the function's (not replaced, not removed)."""
        return self.dispatcher.pools.get(self.pool.spec.name) is self.pool

    def step(self, now: float) -> Decision:
        pool = self.pool
        spec = pool.spec
        # Paused containers are capacity: a thaw is the cheapest start there is.
        current = [
            w
            for w in pool.workers.values()
            if w.version == pool.version and w.state in ("starting", "ready", "paused")
        ]
        ready = [w for w in current if w.state == "ready"]
        paused = [w for w in current if w.state == "paused" and w.id not in self._thawing]
        counts = pool.counts()
        self.scaler.observe(
            Observation(
                at=now,
                in_flight=counts["in_flight"],
                queued=counts["queued"],
                ready=len(ready),
                starting=len(current) - len(ready) - len(paused),
                paused=len(paused),
            )
        )
        if self.pinned is not None:  # `swarmless scale NAME N`: exactly N, no policy
            decision = Decision(desired=self.pinned, reason=f"pinned to {self.pinned}", panic=False)
        else:
            decision = self.scaler.decide(now, scaling_spec(spec), len(current))
        self.last = decision
        if paused and counts["queued"]:
            wanted = -(-counts["queued"] // spec.concurrency)  # ceil
            for w in paused[:wanted]:
                self._thawing.add(w.id)
                self._spawn(self._thaw(w))
        if decision.desired > len(current):
            # A gateway shutting down has retired every worker: never replace them.
            if now >= pool.backoff_until and not self.dispatcher.closing:
                for _ in range(decision.desired - len(current)):
                    self._spawn(self.start_worker())
                self.dispatcher.metrics.scale_events.labels(spec.name, "up").inc(
                    decision.desired - len(current)
                )
        elif decision.desired < len(current):
            surplus = len(current) - decision.desired
            idle = sorted(
                (w for w in ready if not w.busy), key=lambda w: w.last_active
            )  # least recently used first
            for w in idle[:surplus]:
                self._retire(w, now)
            for w in paused[: max(0, surplus - len(idle))]:
                self._kill(w)  # frozen: it cannot drain, and holds nothing
            self.dispatcher.metrics.scale_events.labels(spec.name, "down").inc(
                min(surplus, len(idle) + len(paused))
            )
        elif spec.paused_buffer and not counts["queued"]:
            for w in ready:
                if not w.busy and now - w.last_active >= PAUSE_AFTER:
                    pool.pause(w)
                    self._spawn(self._pause(w))
        # An update: once a container of the new version is ready, the old ones drain.
        if ready or decision.desired == 0:
            for w in list(pool.workers.values()):
                if w.version != pool.version and w.state in ("starting", "ready"):
                    self._retire(w, now)
                elif w.version != pool.version and w.state == "paused":
                    self._kill(w)
        self._reap(now)
        return decision

    async def _pause(self, worker: Worker) -> None:
        if not worker.container:
            return
        try:
            await self.dispatcher.backend.pause_container(worker.container)
        except SwarmlessError as e:
            log.warning("could not pause %s: %s", worker.id, e.message)
            self.pool.thaw(worker)

    async def _thaw(self, worker: Worker) -> None:
        try:
            if worker.container:
                await self.dispatcher.backend.unpause_container(worker.container)
        except SwarmlessError as e:
            log.warning("could not unpause %s: %s", worker.id, e.message)
            self._kill(worker)
            return
        finally:
            self._thawing.discard(worker.id)
        self.pool.thaw(worker)

    def _retire(self, worker: Worker, now: float) -> None:
        self.pool.retire(worker)
        self._draining_since[worker.id] = now

    def _reap(self, now: float) -> None:
        """Kill containers that overstay a drain or never become ready."""
        grace = self.pool.spec.timeout + 5.0
        for w in list(self.pool.workers.values()):
            if w.state == "draining" and now - self._draining_since.get(w.id, now) > grace:
                self._kill(w)
            elif w.state == "starting" and w.container and now - w.created > START_TIMEOUT:
                self.pool.crash(
                    f"function {self.pool.spec.name!r}: a container did not ask for work "
                    f"within {START_TIMEOUT:g}s of its start"
                )
                self._kill(w)

    def _kill(self, worker: Worker) -> None:
        self._draining_since.pop(worker.id, None)
        self.pool.gone(worker)
        self.dispatcher.forget_worker(worker)
        self._spawn(self.dispatcher.stop_worker(worker))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.dispatcher.spawn(coro)

    async def start_worker(self) -> None:
        """Start one container of the pool's current version."""
        pool = self.pool
        worker = self.dispatcher.new_worker(pool)
        launch = WorkerLaunch(
            spec=pool.spec,
            worker_id=worker.id,
            token=worker.token,
            runtime_url=self.dispatcher.runtime_url,
            version=pool.version,
        )
        try:
            worker.container = await self.dispatcher.backend.start_worker(launch)
        except SwarmlessError as e:
            pool.gone(worker)
            self.dispatcher.forget_worker(worker)
            pool.crash(f"function {pool.spec.name!r}: could not start a container: {e.message}")
            log.warning("%s", pool.crashed)
            return
        # Died (and was noticed) before we learnt its id; or, while it was being created,
        # the gateway began to shut down or the pool was dropped (each stopped the
        # containers it knew of): nothing else would ever stop this one.
        if worker.state == "gone" or self.dispatcher.closing or not self.installed:
            await self.dispatcher.stop_worker(worker)
