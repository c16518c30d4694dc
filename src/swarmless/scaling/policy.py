"""The autoscaler policy: how many containers a function wants, as a pure function.

Plan, then act: this module only *decides* the count. The gateway samples each function
about once a second (an :class:`Observation`), the policy turns the recent samples into a
:class:`Decision`, the planner (:mod:`swarmless.scaling.planner`) turns it into actions,
and the reconciler carries them out through the backend. Nothing here touches Docker, a
clock or a global, so every rule is unit-tested with plain numbers.

The policy follows Knative's KPA (concurrency-based, a stable and a panic window):

1. **Demand** is ``in_flight + queued``: calls waiting for a container count, so a
   queue that grows while containers start pulls more containers in.
2. **Stable**: ``ceil(average demand over stable_window / (concurrency *
   target_utilization))``. Averaging over a minute rides out noise.
3. **Panic**: when the average demand over the short ``panic_window`` reaches
   ``panic_threshold *`` the current capacity, ``max(current, 1) * concurrency`` (a lone
   first call is a cold start, not a panic, as in Knative), the policy panics: it also
   sizes for the panic-window average, and for a whole ``stable_window`` after the last
   time the threshold was crossed it **never scales down**. A burst is served at once;
   the stable average catches up meanwhile.
4. **Cold start**: a queued call with no container at all gets one immediately (first
   calls wait in the queue, they never fail for want of a container). While nothing is
   served yet (calls queued, none in flight: from zero, or containers still starting),
   the count is at most ``max(current, ceil(queued / concurrency))``: the queue's own
   need, without ``target_utilization``'s headroom, so a lone first call starts one
   container, not two (the headroom comes once calls are served).
5. **Buffer and bounds**: ``desired = min(max(n, min_containers) + buffer,
   max_containers)``: ``buffer`` pre-warmed containers are kept beyond demand (and beyond
   the ``min_containers`` floor), all counted within ``max_containers``.
6. **Idle**: once ``idle_timeout`` has passed with no call in flight or queued, scale to
   the floor ``min(min_containers + buffer, max_containers)`` (zero by default;
   ``idle_timeout=0`` means as soon as the function is seen idle). Before that, the
   stable average may fall to zero but the policy keeps one container (plus buffer) of
   those running: it never *starts* one for no work, and never removes the last one
   early.
7. **Scale-down delay**: never scale down within ``scale_down_delay`` of the last
   scale-up (a decision above ``current``). Scale-down is then to the computed value at
   once, as in Knative.
8. ``max_containers`` is the last word: the result is always clamped to
   ``[min_containers, max_containers]``, even when a rule would hold more.

With no recent observation (an empty history, or none inside the stable window) the
policy keeps ``current``, clamped to ``[min_containers, max_containers]``.

The planner counts paused containers in ``current`` (a thaw is the cheapest start).

>>> spec = ScalingSpec(concurrency=1, max_containers=10)
>>> history = [Observation(at=float(t), in_flight=7, queued=0, ready=10, starting=0)
...            for t in range(60)]
>>> decision, state = decide(history, spec, State(), now=59.0, current=10)
>>> decision.desired, decision.panic
(10, False)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from swarmless.exceptions import InvalidArgument, SpecError

__all__ = ["Autoscaler", "Decision", "Observation", "ScalingSpec", "State", "decide"]


@dataclass(frozen=True, kw_only=True)
class ScalingSpec:
    """A function's scaling knobs (the gateway builds it from the function spec).

    Raises :class:`~swarmless.exceptions.SpecError` naming every bad field.

    >>> ScalingSpec(concurrency=4, max_containers=20).max_containers
    20
    """

    #: Target in-flight calls per container.
    concurrency: int = 1
    min_containers: int = 0
    max_containers: int = 10
    #: Seconds without any in-flight or queued call before scaling to zero (or to min).
    idle_timeout: float = 300.0
    #: Ready containers kept beyond demand (pre-warmed), counted within ``max_containers``.
    buffer: int = 0
    #: Aim for ``in_flight / (containers * concurrency)`` around this in the stable window.
    target_utilization: float = 0.7
    #: Seconds averaged for the stable decision.
    stable_window: float = 60.0
    #: Seconds averaged for the panic decision.
    panic_window: float = 6.0
    #: Panic when panic-window demand >= this * current capacity.
    panic_threshold: float = 2.0
    #: Never scale down sooner than this after the last scale-up.
    scale_down_delay: float = 10.0

    def __post_init__(self) -> None:
        errors: dict[str, str] = {}

        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                errors[name] = f"{rule}, got {getattr(self, name)!r}"

        check("concurrency", self.concurrency >= 1, "must be at least 1")
        check("min_containers", self.min_containers >= 0, "must be at least 0")
        check("max_containers", self.max_containers >= 1, "must be at least 1")
        if "min_containers" not in errors and "max_containers" not in errors:
            check(
                "min_containers",
                self.min_containers <= self.max_containers,
                f"must not exceed max_containers ({self.max_containers})",
            )
        check("idle_timeout", self.idle_timeout >= 0, "must be at least 0 seconds")
        check("buffer", self.buffer >= 0, "must be at least 0")
        check(
            "target_utilization",
            0 < self.target_utilization <= 1,
            "must be in (0, 1], e.g. 0.7 for 70%",
        )
        check("stable_window", self.stable_window > 0, "must be more than 0 seconds")
        check("panic_window", self.panic_window > 0, "must be more than 0 seconds")
        if "stable_window" not in errors and "panic_window" not in errors:
            check(
                "panic_window",
                self.panic_window <= self.stable_window,
                f"must not exceed stable_window ({self.stable_window:g}s)",
            )
        check("panic_threshold", self.panic_threshold >= 1, "must be at least 1.0")
        check("scale_down_delay", self.scale_down_delay >= 0, "must be at least 0 seconds")
        if errors:
            raise SpecError(errors)

    def size(self, needed: int) -> int:
        """Containers to run for ``needed`` by demand: add the floor, buffer and ceiling."""
        return min(max(needed, self.min_containers) + self.buffer, self.max_containers)

    def clamp(self, n: int) -> int:
        """``n`` within ``[min_containers, max_containers]``."""
        return min(max(n, self.min_containers), self.max_containers)


@dataclass(frozen=True, kw_only=True)
class Observation:
    """One sample of a function, taken by the gateway about once a second."""

    #: Monotonic seconds.
    at: float
    #: Calls being served right now.
    in_flight: int
    #: Calls waiting for a container.
    queued: int
    #: Containers ready (idle or busy).
    ready: int
    #: Containers being started.
    starting: int
    paused: int = 0

    def __post_init__(self) -> None:
        for name in ("in_flight", "queued", "ready", "starting", "paused"):
            value = getattr(self, name)
            if value < 0:
                raise InvalidArgument(f"Observation.{name} must be at least 0, got {value!r}")

    @property
    def demand(self) -> int:
        """Calls that want a container: in flight plus queued."""
        return self.in_flight + self.queued


@dataclass(frozen=True)
class Decision:
    """What the policy wants: ``desired`` containers, counted as ``current`` is."""

    desired: int
    #: Short human text, e.g. ``"panic: demand 12 >= 2x capacity 4: 10"``.
    reason: str
    panic: bool


@dataclass(frozen=True, kw_only=True)
class State:
    """What the policy remembers between decisions (monotonic seconds, ``None``: never)."""

    #: Panic mode lasts until then; extended each time the panic threshold is crossed.
    panic_until: float | None = None
    #: The last decision that asked for more containers than were running.
    last_scale_up: float | None = None
    #: The last time work (in flight or queued) was seen, or when observing began.
    last_busy: float | None = None


def decide(
    history: Sequence[Observation],
    spec: ScalingSpec,
    state: State,
    now: float,
    current: int,
) -> tuple[Decision, State]:
    """Decide how many containers a function wants; pure, see the module docstring.

    ``history`` holds recent observations (any order; those after ``now`` are ignored),
    ``current`` is the containers running now (ready + starting). Returns the decision
    and the state to pass to the next call.
    """
    if current < 0:
        raise InvalidArgument(f"current must be at least 0, got {current!r}")
    seen = [o for o in history if o.at <= now]
    last_busy = _last_busy(seen, state.last_busy)
    recent = [o for o in seen if o.at > now - spec.stable_window]
    if not recent:
        reason = f"no observations in the last {spec.stable_window:g}s: keeping {current}"
        panic = state.panic_until is not None and now < state.panic_until
        return _finish(
            spec, state, now, current, current, [reason], panic, last_busy, state.panic_until
        )

    latest = max(recent, key=lambda o: o.at)
    per_container = spec.concurrency * spec.target_utilization
    stable_avg = _mean(o.demand for o in recent)
    stable_n = _ceil(stable_avg / per_container)
    panic_avg = _mean(o.demand for o in recent if o.at > now - spec.panic_window)
    panic_n = _ceil(panic_avg / per_container)
    # As in Knative, at least one container's worth: a lone first call is a cold start,
    # not a panic; a burst from zero still panics.
    capacity = max(current, 1) * spec.concurrency

    # Panic: a burst in the short window against what is running now.
    over = panic_avg > 0 and panic_avg >= spec.panic_threshold * capacity
    was_panicking = state.panic_until is not None and now < state.panic_until
    panicking = over or was_panicking
    panic_until = now + spec.stable_window if over else state.panic_until
    if not panicking:
        panic_until = None

    parts: list[str] = []
    if over:
        needed = max(stable_n, panic_n)
        parts.append(
            f"panic: demand {panic_avg:.3g} >= {spec.panic_threshold:g}x capacity {capacity}"
            f": {needed}"
        )
    elif panicking:
        assert panic_until is not None
        needed = max(stable_n, panic_n)
        parts.append(f"panic for {panic_until - now:.0f}s more: {needed}")
    else:
        needed = stable_n
        parts.append(
            f"stable: demand {stable_avg:.3g} over {spec.stable_window:g}s"
            f" / ({spec.concurrency} x {spec.target_utilization:g}): {needed}"
        )
        if state.panic_until is not None:
            parts[-1] = f"panic over; {parts[-1]}"

    if latest.queued > 0 and latest.in_flight == 0:
        # Every call wanting a container waits for one (a start from zero, or containers
        # still starting): start what the queue needs, not the utilisation's headroom
        # (a lone first call starts one container, not two); the headroom comes with
        # the first calls served.
        by_queue = max(current, _ceil(latest.queued / spec.concurrency))
        if needed > by_queue:
            needed = by_queue
            parts.append(f"{latest.queued} queued, none served yet: {by_queue}")
    if latest.queued > 0 and current == 0:
        needed = max(needed, 1)
        parts.append(f"{latest.queued} queued, no containers: starting")

    desired = spec.size(needed)
    parts.extend(_size_notes(spec, needed))

    # ``seen`` holds ``latest``, so ``last_busy`` is known here.
    idle_for = now - last_busy if latest.demand == 0 and last_busy is not None else 0.0
    if latest.demand == 0 and idle_for >= spec.idle_timeout:
        desired = spec.size(0)
        parts = [f"idle {idle_for:.0f}s >= {spec.idle_timeout:g}s: {_floor_text(spec)}"]
    else:
        # Before the idle timeout, keep the last container (never start one for no work).
        keep = min(current, spec.size(1))
        if keep > desired:
            desired = keep
            parts.append(f"idle {idle_for:.0f}s < {spec.idle_timeout:g}s: keeping {keep}")

    if desired < current and panicking:
        desired = current
        parts.append(f"no scale-down in panic: holding {current}")
    elif (
        desired < current
        and state.last_scale_up is not None
        and now - state.last_scale_up < spec.scale_down_delay
    ):
        ago = now - state.last_scale_up
        desired = current
        parts.append(
            f"scaled up {ago:.0f}s ago < {spec.scale_down_delay:g}s delay: holding {current}"
        )

    return _finish(spec, state, now, current, desired, parts, panicking, last_busy, panic_until)


class Autoscaler:
    """The policy with its memory: a bounded history and the :class:`State`.

    One per function, owned by the gateway; no Docker, no clock, no globals.

    >>> scaler = Autoscaler()
    >>> scaler.observe(Observation(at=1.0, in_flight=0, queued=3, ready=0, starting=0))
    >>> scaler.decide(1.0, ScalingSpec(), current=0).desired
    3
    """

    def __init__(self, *, max_samples: int = 600) -> None:
        if max_samples < 1:
            raise InvalidArgument(f"max_samples must be at least 1, got {max_samples!r}")
        self._history: deque[Observation] = deque(maxlen=max_samples)
        self._state = State()

    @property
    def history(self) -> tuple[Observation, ...]:
        """The observations kept, oldest first."""
        return tuple(self._history)

    @property
    def state(self) -> State:
        return self._state

    def observe(self, obs: Observation) -> None:
        """Record one sample (the oldest is dropped beyond ``max_samples``)."""
        self._history.append(obs)

    def decide(self, now: float, spec: ScalingSpec, current: int) -> Decision:
        """Decide for ``now``; ``current`` is ready + starting containers."""
        decision, state = decide(self._history, spec, self._state, now, current)
        self.settle(state, forget_before=now - spec.stable_window)
        return decision

    def settle(self, state: State, *, forget_before: float) -> None:
        """Keep ``state`` (what :func:`decide` answered over this history) and forget the
        samples at or before ``forget_before`` (older than the stable window: used no
        more, ``state.last_busy`` keeps what they told)."""
        self._state = state
        while self._history and self._history[0].at <= forget_before:
            self._history.popleft()


def _finish(
    spec: ScalingSpec,
    state: State,
    now: float,
    current: int,
    desired: int,
    parts: list[str],
    panic: bool,
    last_busy: float | None,
    panic_until: float | None,
) -> tuple[Decision, State]:
    clamped = spec.clamp(desired)
    if clamped > desired:
        parts.append(f"at least min {spec.min_containers}")
    elif clamped < desired:
        parts.append(f"clamped to max {spec.max_containers}")
    new_state = replace(
        state,
        panic_until=panic_until,
        last_scale_up=now if clamped > current else state.last_scale_up,
        last_busy=last_busy,
    )
    return Decision(clamped, "; ".join(parts), panic), new_state


def _last_busy(seen: Sequence[Observation], before: float | None) -> float | None:
    """The latest time work was seen; a fresh policy counts idle from its first sample."""
    busy = [o.at for o in seen if o.demand > 0]
    if busy:
        return max(busy) if before is None else max(before, max(busy))
    if before is None and seen:
        return min(o.at for o in seen)
    return before


def _mean(values: Iterable[int]) -> float:
    total = count = 0
    for v in values:
        total += v
        count += 1
    return total / count if count else 0.0


def _ceil(x: float) -> int:
    # Rounding first keeps float noise from adding a container: 3.5 / 0.7 is 5.000000000000001.
    return math.ceil(round(x, 9))


def _size_notes(spec: ScalingSpec, needed: int) -> list[str]:
    notes = []
    if needed < spec.min_containers:
        notes.append(f"at least min {spec.min_containers}")
    if spec.buffer:
        notes.append(f"+ buffer {spec.buffer}")
    if max(needed, spec.min_containers) + spec.buffer > spec.max_containers:
        notes.append(f"clamped to max {spec.max_containers}")
    return notes


def _floor_text(spec: ScalingSpec) -> str:
    floor = spec.size(0)
    if floor == 0:
        return "to zero"
    if spec.buffer == 0:
        return f"to min {floor}"
    return f"to {floor} (min {spec.min_containers} + buffer {spec.buffer})"
