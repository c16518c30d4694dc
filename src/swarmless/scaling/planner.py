"""The scaling planner: from a snapshot of one warm pool, a plan of actions with reasons.

Plan, then act (as chalice's ``deploy/planner.py`` and ``executor.py``): :func:`plan` is
pure. It reads a :class:`Snapshot` (the pool's workers with their states, ages and
versions, the calls in flight and queued, the recent crashes, the autoscaler's memory,
``now``) and answers a :class:`Plan`: the count the policy wants
(:func:`~swarmless.scaling.policy.decide`) and the actions that get there, each with its
reason. The reconciler (:mod:`swarmless.scaling.reconciler`) only carries plans out and
records them; ``describe`` shows the reasons. The snapshot's types are in
:mod:`swarmless.scaling.snapshot`, the plan's in :mod:`swarmless.scaling.actions` (both
re-exported here).

The rules, in order; a worker gets at most one action per plan, the first rule wins:

1. **Thaw**: calls are queued and paused containers of the current version wait: thaw
   one per ``concurrency`` queued calls (a thaw is the cheapest start there is).
2. **Size** (paused containers count as capacity):
   - fewer than the policy wants: **start** the difference (while nothing is in flight
     or queued, only up to the floor ``min_containers + buffer``: no start for no work,
     unless a crash is retried), unless the gateway is
     closing (nothing at all), the engine does not answer (**back off** until it does)
     or a crash backoff runs (**back off** instead: after the n-th crash in a row before
     a container was ready, no start for ``backoff_base * 2**(n-1)`` seconds, at most
     ``backoff_max``);
   - more: **retire** idle ready containers, those that never served a call first, then
     the least recently used (by their last call: polls are not use), then **kill**
     paused ones (frozen, they cannot drain; they hold nothing);
   - as many, with ``paused_buffer`` and nothing queued: **pause** ready containers idle
     for ``pause_after``.
3. **Rollout**: once a container of the current version is ready (or none is wanted),
   **retire** the older versions' starting and ready containers and **kill** their
   paused ones: an update without failed calls.
4. **Reap**: **kill** a draining container ``timeout + drain_grace`` after it began to
   drain, and a started container that has not asked for work within ``start_timeout``
   (that one counts as a crash; not while the engine does not answer).
5. **Check**: a ready container holding no call and with no poll waiting, silent for
   ``silent_after`` (the long poll and a grace), is **checked** against the engine (at
   most once per ``silent_after``; not while the engine does not answer): its death may
   have gone unheard, and then it is replaced.

>>> w = WorkerView(id="w1", version=1, state="ready", created=0.0, last_active=0.0)
>>> p = plan(Snapshot(now=100.0, version=2, workers=(w,), queued=1), FunctionSpec(
...     name="f", image="python", mode="warm", handler="app:handle"))
>>> [type(a).__name__ for a in p.actions]
['Start']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from swarmless.scaling.actions import (
    Action,
    BackOff,
    Check,
    Kill,
    Pause,
    Plan,
    Retire,
    Start,
    Thaw,
)
from swarmless.scaling.actions import Cause as Cause
from swarmless.scaling.policy import Decision, Observation, ScalingSpec, State, decide
from swarmless.scaling.settings import ScalingSettings
from swarmless.scaling.snapshot import Snapshot, WorkerView
from swarmless.scaling.snapshot import WorkerState as WorkerState
from swarmless.spec import FunctionSpec

__all__ = [
    "Action",
    "BackOff",
    "Check",
    "Kill",
    "Pause",
    "Plan",
    "Retire",
    "Snapshot",
    "Start",
    "Thaw",
    "WorkerView",
    "plan",
    "scaling_spec",
]

_DEFAULT = ScalingSettings()
_CAPACITY = ("starting", "ready", "paused")


def scaling_spec(spec: FunctionSpec, settings: ScalingSettings = _DEFAULT) -> ScalingSpec:
    """The policy's knobs: the function's own, and the windows of ``settings``.

    A short ``idle_timeout`` shortens the stable window (never below the panic window)
    and the scale-down delay, so that scale-to-zero is not held back by them.
    """
    return ScalingSpec(
        concurrency=spec.concurrency,
        min_containers=spec.min_containers,
        max_containers=spec.max_containers,
        idle_timeout=spec.idle_timeout,
        buffer=spec.buffer,
        target_utilization=settings.target_utilization,
        stable_window=min(settings.stable_window, max(spec.idle_timeout, settings.panic_window)),
        panic_window=settings.panic_window,
        panic_threshold=settings.panic_threshold,
        scale_down_delay=min(settings.scale_down_delay, spec.idle_timeout),
    )


# -- the planner ---------------------------------------------------------------------------


def plan(snapshot: Snapshot, spec: FunctionSpec, settings: ScalingSettings = _DEFAULT) -> Plan:
    """Plan one step for the warm pool of ``spec``; pure, see the module docstring."""
    s = snapshot
    now = s.now
    current = [w for w in s.workers if w.version == s.version and w.state in _CAPACITY]
    ready = [w for w in current if w.state == "ready"]
    paused = [w for w in current if w.state == "paused" and not w.thawing]
    obs = Observation(
        at=now,
        in_flight=s.in_flight,
        queued=s.queued,
        ready=len(ready),
        starting=len(current) - len(ready) - len(paused),  # a thawing one is starting
        paused=len(paused),
    )
    state: State | None
    if s.pinned is not None:
        # A pin over max_containers (the function redeployed with a lower one) stops there.
        n = min(s.pinned, spec.max_containers)
        why = f"pinned to {s.pinned}" + (f" (max_containers {n})" if n < s.pinned else "")
        decision, state = Decision(n, why, False), None
    else:
        sspec = scaling_spec(spec, settings)
        decision, state = decide((*s.history, obs), sspec, s.state, now, len(current))
        decision, state = _hold_without_work(decision, state, s, sspec, len(current), obs)

    out = _Actions()
    thawed = _thaw(out, s, spec, paused)
    _size(out, s, spec, settings, decision, current, ready, paused, thawed)
    if ready or decision.desired == 0:
        _rollout(out, s)
    _reap(out, s, spec, settings)
    _check(out, s)
    return Plan(at=now, decision=decision, actions=tuple(out), observation=obs, state=state)


def _hold_without_work(
    decision: Decision,
    state: State,
    s: Snapshot,
    sspec: ScalingSpec,
    current: int,
    obs: Observation,
) -> tuple[Decision, State | None]:
    """Nothing in flight or queued now: no start beyond the floor (``min_containers +
    buffer``), whatever the policy's averages say (still high from calls answered already,
    they would start containers no call waits for: a lone first call whose container took
    a few seconds to start would get a second one after its answer). Not while a crash is
    retried: the back-off's retries are how a function that crashed comes back."""
    hold = max(current, sspec.size(0))
    if obs.demand or s.crashes or decision.desired <= hold:
        return decision, state
    reason = f"{decision.reason}; nothing in flight or queued: no start, holding {hold}"
    # No scale-up happened: the scale-down delay still counts from the last real one.
    kept = replace(state, last_scale_up=s.state.last_scale_up) if hold <= current else state
    return Decision(hold, reason, decision.panic), kept


class _Actions(list[Action]):
    """The plan being built: at most one action per worker."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: set[str] = set()

    def on(self, action: Retire | Pause | Thaw | Kill | Check) -> None:
        if action.worker not in self.taken:
            self.taken.add(action.worker)
            self.append(action)


def _least_recently_used(w: WorkerView) -> tuple[bool, float]:
    """The scale-down's order: containers that never served a call first (the oldest
    first), then by their last call (its polls and heartbeats do not count as use)."""
    if w.last_call is None:
        return (False, w.created)
    return (True, w.last_call)


def _thaw(
    out: _Actions, s: Snapshot, spec: FunctionSpec, paused: Sequence[WorkerView]
) -> list[WorkerView]:
    if not (paused and s.queued):
        return []
    wanted = -(-s.queued // spec.concurrency)  # ceil
    thawed = list(paused[:wanted])
    for w in thawed:
        out.on(Thaw(worker=w.id, reason=f"{s.queued} queued: thawing instead of a cold start"))
    return thawed


def _size(
    out: _Actions,
    s: Snapshot,
    spec: FunctionSpec,
    settings: ScalingSettings,
    decision: Decision,
    current: Sequence[WorkerView],
    ready: Sequence[WorkerView],
    paused: Sequence[WorkerView],
    thawed: Sequence[WorkerView],
) -> None:
    now, n, desired = s.now, len(current), decision.desired
    if desired > n:
        if s.closing:  # a gateway shutting down retired every worker: never replace them
            return
        if s.engine_down is not None:
            reason = f"the Docker Engine does not answer ({s.engine_down}): no start until it does"
            out.append(BackOff(until=now + settings.interval, reason=reason))
            return
        delay = settings.backoff(s.crashes)
        if s.last_crash is not None and now < s.last_crash + delay:
            last = f": {s.crash_reason}" if s.crash_reason else ""
            reason = (
                f"{s.crashes} crash(es) in a row before a container was ready: "
                f"no start for {delay:g}s after the last{last}"
            )
            out.append(BackOff(until=s.last_crash + delay, reason=reason))
            return
        out.append(Start(count=desired - n, reason=f"{n} -> {desired}: {decision.reason}"))
    elif desired < n:
        surplus = n - desired
        idle = sorted((w for w in ready if not w.busy), key=_least_recently_used)
        for w in idle[:surplus]:
            used = (
                "never used"
                if w.last_call is None
                else f"least recently used (idle {now - w.last_call:.0f}s)"
            )
            out.on(
                Retire(
                    worker=w.id,
                    cause="scale-down",
                    reason=f"{n} -> {desired}, {used}: {decision.reason}",
                )
            )
        thawing = {w.id for w in thawed}
        frozen = [w for w in paused if w.id not in thawing]
        for w in frozen[: max(0, surplus - len(idle))]:
            out.on(
                Kill(
                    worker=w.id,
                    cause="scale-down",
                    reason=f"{n} -> {desired}, paused (holds nothing): {decision.reason}",
                )
            )
    elif spec.paused_buffer and not s.queued:
        for w in ready:
            idle_for = now - w.last_active
            if not w.busy and idle_for >= settings.pause_after:
                reason = f"idle {idle_for:.0f}s >= {settings.pause_after:g}s: paused buffer"
                out.on(Pause(worker=w.id, reason=reason))


def _rollout(out: _Actions, s: Snapshot) -> None:
    for w in s.workers:
        if w.version == s.version:
            continue
        reason = f"rollout: version {w.version} replaced by {s.version}"
        if w.state in ("starting", "ready"):
            out.on(Retire(worker=w.id, cause="rollout", reason=reason))
        elif w.state == "paused":
            out.on(Kill(worker=w.id, cause="rollout", reason=f"{reason} (paused)"))


def _reap(out: _Actions, s: Snapshot, spec: FunctionSpec, settings: ScalingSettings) -> None:
    grace = spec.timeout + settings.drain_grace
    for w in s.workers:
        if w.state == "draining" and w.draining_since is not None:
            if s.now - w.draining_since > grace:
                reason = (
                    f"draining {s.now - w.draining_since:.0f}s > {grace:g}s "
                    f"(timeout {spec.timeout:g}s + {settings.drain_grace:g}s)"
                )
                out.on(Kill(worker=w.id, cause="drain-overdue", reason=reason))
        elif (
            w.state == "starting"
            and w.has_container
            and s.now - w.created > settings.start_timeout
            and s.engine_down is None
        ):
            reason = (
                f"function {spec.name!r}: a container did not ask for work "
                f"within {settings.start_timeout:g}s of its start"
            )
            out.on(Kill(worker=w.id, cause="start-timeout", crash=True, reason=reason))


def _check(out: _Actions, s: Snapshot) -> None:
    limit = s.silent_after
    if limit is None or s.engine_down is not None:
        return
    for w in s.workers:
        if w.state != "ready" or w.busy or w.polling or not w.has_container:
            continue
        silent = s.now - w.last_active
        if silent > limit and (w.checked_at is None or s.now - w.checked_at > limit):
            reason = f"no poll for {silent:.0f}s > {limit:g}s (the long poll and a grace)"
            out.on(Check(worker=w.id, reason=reason))
