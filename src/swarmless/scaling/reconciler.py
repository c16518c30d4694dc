"""The reconciler: carries out the planner's plans for one warm pool, and records them.

Once a second (and at once when a call finds no container) it takes a
:class:`~swarmless.scaling.planner.Snapshot` of the pool, asks the pure planner
(:func:`~swarmless.scaling.planner.plan`) what to do, and does it through the pool and
the backend: starts containers in parallel, drains, freezes, thaws and kills the ones
named, and asks the engine about silent ones (a container the engine no longer runs is
reported lost to the worker registry, and replaced by the next plan). It decides nothing
itself; the last plan and the recent plans with actions (their reasons) are what
``describe`` shows. A start that fails because the engine does not answer is not a crash
of the function: the next plans back off until the engine is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from swarmless.backends.base import WorkerLaunch
from swarmless.dispatch.pool import WarmPool, Worker
from swarmless.dispatch.workers import ALIVE
from swarmless.exceptions import (
    EngineUnavailable,
    FunctionFailed,
    FunctionNotFound,
    InvalidArgument,
    SwarmlessError,
    WaitTimeout,
)
from swarmless.scaling.planner import (
    Action,
    BackOff,
    Check,
    Kill,
    Pause,
    Plan,
    Retire,
    Snapshot,
    Start,
    Thaw,
    WorkerView,
    plan,
    scaling_spec,
)
from swarmless.scaling.policy import Autoscaler
from swarmless.scaling.settings import ScalingSettings

if TYPE_CHECKING:
    from swarmless.dispatch.dispatcher import Dispatcher

__all__ = ["Reconciler", "scaling_spec"]

log = logging.getLogger("swarmless.scaling")


class Reconciler:
    """Keeps one warm pool as its plans say; the only part of scaling that acts."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        pool: WarmPool,
        *,
        settings: ScalingSettings | None = None,
        silent_after: float | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.pool = pool
        self.settings = settings or ScalingSettings()
        #: Seconds without a poll after which an idle ready worker is checked (None: never;
        #: the gateway's wiring gives the runtime API's long poll and a grace).
        self.silent_after = silent_after
        self.scaler = Autoscaler()
        self._pinned: int | None = None
        self._last: Plan | None = None
        #: Plans with actions, with their wall-clock time (the newest last).
        self._recent: deque[tuple[float, Plan]] = deque(maxlen=self.settings.plan_history)
        self._draining_since: dict[str, float] = {}
        self._thawing: set[str] = set()
        self._checked: dict[str, float] = {}

    # -- what collaborators ask ------------------------------------------------------------

    @property
    def pinned(self) -> int | None:
        """The count ``swarmless scale`` pinned (None: autoscaled)."""
        return self._pinned

    def pin(self, replicas: int | None) -> None:
        """Run exactly ``replicas`` containers, no policy (None: autoscale again)."""
        if replicas is not None and replicas < 0:
            raise InvalidArgument(f"replicas must be at least 0 or null, got {replicas!r}")
        self._pinned = replicas
        self.wake()

    def wake(self) -> None:
        """Plan again now rather than at the next tick."""
        self.pool.wake.set()

    async def settled(self, replicas: int, timeout: float) -> None:
        """Wait, at most ``timeout`` seconds, until the function runs ``replicas``
        containers, each ready (or paused) and none other starting or draining: what
        ``swarmless scale --wait`` waits for, woken by each change of the containers (not
        polling). Raises :class:`~swarmless.WaitTimeout` when the time is up (the function
        stays pinned: its containers go on starting or draining), and
        :class:`~swarmless.FunctionFailed` when one of its containers fails before it is
        ready (the reconciler starts another after a back-off)."""
        pool = self.pool
        name = pool.spec.name
        since = time.monotonic()
        deadline = since + timeout
        while True:
            if not self.installed:
                if self.dispatcher.pools.get(name) is None:
                    raise FunctionNotFound(name)
                raise FunctionFailed(
                    f"function {name!r} was deployed again while this scale waited: it is "
                    "scaled as its new version says"
                )
            c = pool.counts()
            up = c["ready"] + c["paused"]
            if up >= replicas and up + c["starting"] + c["draining"] + pool.stopping <= replicas:
                return
            if pool.crashed is not None and (pool.crashed_at or 0) >= since:
                raise FunctionFailed(
                    f"a container of function {name!r} failed before it was ready "
                    f"({pool.crashed}); it stays pinned to {self._pinned}: another is "
                    "started after a back-off"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(
                    f"function {name!r} has {c['ready'] + c['paused']} of {replicas} "
                    f"containers ready after {timeout:g}s ({c['starting']} starting, "
                    f"{c['draining'] + pool.stopping} stopping); it stays pinned to "
                    f"{self._pinned}",
                    timeout=timeout,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pool.changes().wait(), left)

    @property
    def last_plan(self) -> Plan | None:
        return self._last

    def describe(self) -> dict[str, Any]:
        """The last decision and the recent plans with their reasons (for ``describe``)."""
        last = self._last
        return {
            "pinned": self._pinned,
            "desired": last.decision.desired if last else None,
            "reason": last.decision.reason if last else None,
            "panic": last.decision.panic if last else None,
            "actions": [a.to_dict(last.at) for a in last.actions] if last else [],
            "recent": [{"at": round(wall, 3), **p.to_dict()} for wall, p in self._recent],
        }

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile until cancelled (or the pool's function is removed)."""
        pool = self.pool
        # In the background: the first container starts sooner once its image is ready.
        with contextlib.suppress(Exception):
            await self.dispatcher.backend.prepare_worker(pool.spec)
        while self.installed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pool.wake.wait(), self.settings.interval)
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

    def step(self, now: float) -> Plan:
        """Observe, plan, act; returns the plan carried out."""
        done = plan(self.snapshot(now), self.pool.spec, self.settings)
        self.scaler.observe(done.observation)
        if done.state is not None:
            window = scaling_spec(self.pool.spec, self.settings).stable_window
            self.scaler.settle(done.state, forget_before=now - window)
        self._record(done)
        for action in done.actions:
            self._carry_out(action, now)
        return done

    def snapshot(self, now: float) -> Snapshot:
        """The pool as the planner sees it at ``now``."""
        pool = self.pool
        # Forget what was kept about workers that are gone (exited, or killed).
        self._draining_since = {k: v for k, v in self._draining_since.items() if k in pool.workers}
        self._thawing = {k for k in self._thawing if k in pool.workers}
        self._checked = {k: v for k, v in self._checked.items() if k in pool.workers}
        polling = pool.polling()
        workers = tuple(
            WorkerView(
                id=w.id,
                version=w.version,
                state=w.state,
                created=w.created,
                last_active=w.last_active,
                last_call=w.last_call,
                calls=len(w.in_hand),
                has_container=bool(w.container),
                thawing=w.id in self._thawing,
                draining_since=self._draining_since.get(w.id),
                polling=w.id in polling,
                checked_at=self._checked.get(w.id),
            )
            for w in pool.workers.values()
            if w.state != "gone"
        )
        return Snapshot(
            now=now,
            version=pool.version,
            workers=workers,
            queued=pool.counts()["queued"],
            history=self.scaler.history,
            state=self.scaler.state,
            pinned=self._pinned,
            closing=self.dispatcher.closing,
            crashes=pool.crashes,
            last_crash=pool.crashed_at,
            crash_reason=pool.crashed,
            engine_down=self.dispatcher.engine_down,
            silent_after=self.silent_after,
        )

    def _record(self, done: Plan) -> None:
        self._last = done
        if not done.actions:
            return
        # A crash loop (or an engine away) repeats one back-off each tick: keep it once.
        repeated = bool(self._recent) and _same(self._recent[-1][1].actions, done.actions)
        if repeated and all(isinstance(a, BackOff) for a in done.actions):
            return
        self._recent.append((time.time(), done))
        for action in done.actions:
            log.debug("%s: %s", self.pool.spec.name, action)

    # -- carrying out ----------------------------------------------------------------------

    def _carry_out(self, action: Action, now: float) -> None:
        pool = self.pool
        name = pool.spec.name
        if isinstance(action, Start):
            for _ in range(action.count):
                self._spawn(self.start_worker())
            self.dispatcher.metrics.scale_events.labels(name, "up").inc(action.count)
            return
        if isinstance(action, BackOff):
            return  # nothing to do but wait: the plan records why
        worker = pool.workers.get(action.worker)
        if worker is None:  # gone since the snapshot
            return
        match action:
            case Thaw():
                self._thawing.add(worker.id)
                self._spawn(self._thaw(worker))
            case Pause():
                pool.pause(worker)
                self._spawn(self._pause(worker))
            case Retire():
                pool.retire(worker)
                self._draining_since[worker.id] = now
            case Kill():
                if action.crash:
                    pool.crash(action.reason)
                self._kill(worker)
            case Check():
                self._checked[worker.id] = now
                self._spawn(self._check(worker, action.reason))
        if isinstance(action, Retire | Kill) and action.cause == "scale-down":
            self.dispatcher.metrics.scale_events.labels(name, "down").inc()

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

    async def _check(self, worker: Worker, why: str) -> None:
        """Ask the engine whether ``worker``'s container still runs; if not, it is lost."""
        try:
            found = await self.dispatcher.backend.list_containers()
        except SwarmlessError as e:
            log.warning("could not check worker %s: %s", worker.id, e.message)
            return
        state = next((c.status for c in found if c.id == worker.container), None)
        if state in ALIVE or worker.state == "gone":
            return
        log.warning(
            "%s: worker %s is %s on the engine (%s): replaced",
            self.pool.spec.name,
            worker.id,
            state or "gone",
            why,
        )
        self.dispatcher.worker_lost(worker)
        self.wake()

    def _kill(self, worker: Worker) -> None:
        self._draining_since.pop(worker.id, None)
        self.pool.gone(worker)
        self.dispatcher.forget_worker(worker)
        self._spawn(self.pool.stopping_while(self.dispatcher.stop_worker(worker)))

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
            pool.launched(worker, await self.dispatcher.backend.start_worker(launch))
        except EngineUnavailable as e:  # not the function's fault: the plans back off
            pool.gone(worker)
            self.dispatcher.forget_worker(worker)
            log.warning("function %r: no container started: %s", pool.spec.name, e.message)
            return
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


def _same(a: tuple[Action, ...], b: tuple[Action, ...]) -> bool:
    """The same actions for the same reasons (a back-off's end moves on each tick)."""
    return [(x.kind, x.reason) for x in a] == [(y.kind, y.reason) for y in b]
