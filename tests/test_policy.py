"""The autoscaler policy, table-driven: no Docker, no clock, just numbers.

Each row of ``CASES`` is one call of :func:`swarmless.scaling.decide`: a history of
samples (one a second, ending at ``NOW`` unless stated), the remembered state, the
containers running now, and what the policy must answer; tests/test_planner.py runs the
same table through the planner and asserts on the plans. The sequence tests at the end
drive :class:`~swarmless.scaling.Autoscaler` second by second with a reconciler that
applies every decision at once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from swarmless.exceptions import InvalidArgument, SpecError
from swarmless.scaling import Autoscaler, Decision, Observation, ScalingSpec, State, decide

NOW = 1000.0
DEFAULT = ScalingSpec()


def obs(at: float, in_flight: int = 0, queued: int = 0, ready: int = 0) -> Observation:
    return Observation(at=at, in_flight=in_flight, queued=queued, ready=ready, starting=0)


def load(*segments: tuple[int, ...], end: float = NOW) -> list[Observation]:
    """One sample a second ending at ``end``: ``(seconds, in_flight[, queued])`` segments."""
    demands = [(seg[1], seg[2] if len(seg) > 2 else 0) for seg in segments for _ in range(seg[0])]
    start = end - len(demands) + 1
    return [obs(start + i, in_flight, queued) for i, (in_flight, queued) in enumerate(demands)]


@dataclass(frozen=True)
class Case:
    history: list[Observation]
    current: int
    desired: int
    spec: ScalingSpec = DEFAULT
    state: State = field(default_factory=State)
    panic: bool = False
    #: A piece of the reason that must be there.
    reason: str = ""


def ramp(*levels: int) -> list[Observation]:
    return load(*((10, level) for level in levels))


CASES = {
    # No data: keep what runs, within bounds.
    "empty-history-keeps-current": Case([], current=3, desired=3, reason="no observations"),
    "empty-history-clamped-to-max": Case([], current=15, desired=10, reason="clamped to max 10"),
    "empty-history-clamped-to-min": Case(
        [], current=0, desired=2, spec=ScalingSpec(min_containers=2), reason="at least min 2"
    ),
    "stale-history-keeps-current": Case(
        load((10, 5), end=NOW - 100), current=4, desired=4, reason="no observations"
    ),
    "future-samples-ignored": Case(
        [*load((60, 7)), obs(NOW + 5, in_flight=100)], current=10, desired=10
    ),
    # From zero.
    "burst-from-zero": Case(
        load((59, 0), (1, 0, 20)), current=0, desired=5, panic=True, reason="panic"
    ),
    "burst-from-zero-capped-at-max": Case(
        load((6, 0, 40)), current=0, desired=10, panic=True, reason="clamped to max 10"
    ),
    "first-call-waits-for-one": Case(
        load((59, 0), (1, 0, 1)), current=0, desired=1, reason="1 queued, no containers"
    ),
    # Nothing served yet: the queue's own need, not the utilisation's headroom.
    "lone-first-call-fresh-history-one": Case(
        load((1, 0, 1)), current=0, desired=1, reason="none served yet: 1"
    ),
    "lone-first-call-while-starting-still-one": Case(
        load((3, 0, 1)), current=1, desired=1, reason="none served yet: 1"
    ),
    "queued-from-zero-one-each": Case(
        load((1, 0, 3)), current=0, desired=3, panic=True, reason="none served yet: 3"
    ),
    "queued-from-zero-concurrency-2": Case(
        load((1, 0, 3)), current=0, desired=2, spec=ScalingSpec(concurrency=2)
    ),
    "served-calls-get-headroom": Case(load((3, 1, 1)), current=1, desired=3, panic=True),
    # Steady load: ceil(avg / (concurrency * target_utilization)).
    "steady-load": Case(load((60, 7)), current=10, desired=10, reason="stable"),
    "steady-load-concurrency-4": Case(
        load((60, 14)), current=5, desired=5, spec=ScalingSpec(concurrency=4)
    ),
    "concurrency-10": Case(load((60, 50)), current=6, desired=8, spec=ScalingSpec(concurrency=10)),
    "full-utilization": Case(
        load((60, 5)), current=5, desired=5, spec=ScalingSpec(target_utilization=1.0)
    ),
    "queued-counts-as-demand": Case(load((60, 4, 3)), current=6, desired=10),
    # Ramps: the stable average (3.5 / 0.7 is 5, not 6, despite float noise).
    "ramp-up": Case(ramp(1, 2, 3, 4, 5, 6), current=4, desired=5),
    "ramp-down-at-once": Case(
        ramp(6, 5, 4, 3, 2, 1), current=8, desired=5, state=State(last_scale_up=NOW - 100)
    ),
    # Panic: panic-window demand >= 2x capacity.
    "panic-entry": Case(
        load((54, 2), (6, 20)),
        current=2,
        desired=29,
        spec=ScalingSpec(max_containers=50),
        panic=True,
        reason="panic: demand 20 >= 2x capacity 2",
    ),
    "panic-at-threshold": Case(load((60, 4)), current=2, desired=6, panic=True),
    "below-panic-threshold": Case(load((60, 3)), current=2, desired=5),
    "panic-threshold-counts-concurrency": Case(
        load((60, 15)), current=2, desired=6, spec=ScalingSpec(concurrency=4)
    ),
    "panic-holds-no-scale-down": Case(
        load((60, 1)),
        current=8,
        desired=8,
        state=State(panic_until=NOW + 30),
        panic=True,
        reason="no scale-down in panic",
    ),
    "panic-scales-up-further": Case(
        load((54, 5), (6, 10)),
        current=8,
        desired=15,
        spec=ScalingSpec(max_containers=50),
        state=State(panic_until=NOW + 30),
        panic=True,
    ),
    "panic-exit": Case(
        load((60, 1)),
        current=8,
        desired=2,
        state=State(panic_until=NOW - 1, last_scale_up=NOW - 61),
        reason="panic over",
    ),
    "no-sample-in-panic-window": Case(load((10, 9), end=NOW - 20), current=5, desired=10),
    # Idle: to the floor only after idle_timeout with nothing in flight or queued.
    "idle-to-zero": Case(
        load((60, 0)),
        current=1,
        desired=0,
        state=State(last_busy=NOW - 301),
        reason="idle 301s >= 300s: to zero",
    ),
    "idle-before-timeout-keeps-one": Case(
        load((60, 0)),
        current=3,
        desired=1,
        state=State(last_busy=NOW - 120),
        reason="idle 120s < 300s: keeping 1",
    ),
    "idle-never-starts-one": Case(
        load((60, 0)), current=0, desired=0, state=State(last_busy=NOW - 120)
    ),
    "idle-timeout-zero-at-once": Case(
        load((59, 3), (1, 0)),
        current=5,
        desired=0,
        spec=ScalingSpec(idle_timeout=0),
        reason="idle 1s >= 0s: to zero",
    ),
    "idle-to-min": Case(
        load((60, 0)),
        current=3,
        desired=2,
        spec=ScalingSpec(min_containers=2),
        state=State(last_busy=NOW - 400),
        reason="to min 2",
    ),
    "idle-to-min-plus-buffer": Case(
        load((60, 0)),
        current=5,
        desired=3,
        spec=ScalingSpec(min_containers=1, buffer=2),
        state=State(last_busy=NOW - 400),
        reason="to 3 (min 1 + buffer 2)",
    ),
    "idle-clock-starts-at-first-sample": Case(
        load((60, 0)), current=2, desired=0, spec=ScalingSpec(idle_timeout=30)
    ),
    "idle-clock-fresh-keeps-one": Case(load((60, 0)), current=2, desired=1),
    "work-resets-idle-clock": Case(
        load((59, 0), (1, 1)), current=1, desired=1, state=State(last_busy=NOW - 1000)
    ),
    # Bounds and buffer.
    "max-clamp": Case(
        load((60, 100)), current=10, desired=10, panic=True, reason="clamped to max 10"
    ),
    "min-clamp": Case(
        load((60, 1)),
        current=3,
        desired=3,
        spec=ScalingSpec(min_containers=3),
        reason="at least min 3",
    ),
    "buffer-added": Case(
        load((60, 7)),
        current=12,
        desired=12,
        spec=ScalingSpec(buffer=2, max_containers=20),
        reason="+ buffer 2",
    ),
    "buffer-counted-within-max": Case(
        load((60, 7)),
        current=12,
        desired=12,
        spec=ScalingSpec(buffer=5, max_containers=12),
        reason="clamped to max 12",
    ),
    "buffer-on-top-of-min": Case(
        load((60, 1)), current=3, desired=3, spec=ScalingSpec(min_containers=2, buffer=1)
    ),
    "max-wins-over-panic-hold": Case(
        load((60, 1)),
        current=8,
        desired=4,
        spec=ScalingSpec(max_containers=4),
        state=State(panic_until=NOW + 30),
        panic=True,
    ),
    # Scale-down delay after a scale-up.
    "delay-holds-after-scale-up": Case(
        load((60, 1)),
        current=6,
        desired=6,
        state=State(last_scale_up=NOW - 5),
        reason="scaled up 5s ago < 10s delay",
    ),
    "delay-elapsed-scales-down": Case(
        load((60, 1)), current=6, desired=2, state=State(last_scale_up=NOW - 11)
    ),
    "delay-never-blocks-scale-up": Case(
        load((60, 7)), current=5, desired=10, state=State(last_scale_up=NOW - 1)
    ),
    "delay-holds-idle-to-zero": Case(
        load((60, 0)),
        current=2,
        desired=2,
        spec=ScalingSpec(idle_timeout=0),
        state=State(last_scale_up=NOW - 3),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_decide(case: Case) -> None:
    decision, _ = decide(case.history, case.spec, case.state, NOW, case.current)
    assert (decision.desired, decision.panic) == (case.desired, case.panic), decision.reason
    assert case.reason in decision.reason


@pytest.mark.parametrize(
    ("history", "state", "current", "expected"),
    [
        pytest.param(
            load((54, 2), (6, 20)),
            State(),
            2,
            State(panic_until=NOW + 60, last_scale_up=NOW, last_busy=NOW),
            id="panic-entry-sets-until-and-scale-up",
        ),
        pytest.param(
            load((54, 2), (6, 20)),
            State(panic_until=NOW + 10, last_scale_up=NOW - 5),
            10,
            State(panic_until=NOW + 60, last_scale_up=NOW - 5, last_busy=NOW),
            id="panic-extended-while-over",
        ),
        pytest.param(
            load((60, 1)),
            State(panic_until=NOW - 1, last_scale_up=NOW - 61, last_busy=NOW - 1),
            8,
            State(panic_until=None, last_scale_up=NOW - 61, last_busy=NOW),
            id="panic-cleared-on-exit",
        ),
        pytest.param(
            load((50, 3), (10, 0)),
            State(last_busy=NOW - 500),
            5,
            State(last_busy=NOW - 10),
            id="last-busy-is-latest-work",
        ),
        pytest.param(
            load((60, 0)),
            State(),
            0,
            State(last_busy=NOW - 59),
            id="last-busy-starts-at-first-sample",
        ),
        pytest.param(
            [],
            State(panic_until=NOW + 5, last_scale_up=NOW - 2, last_busy=NOW - 3),
            3,
            State(panic_until=NOW + 5, last_scale_up=NOW - 2, last_busy=NOW - 3),
            id="empty-history-keeps-state",
        ),
    ],
)
def test_state(history: list[Observation], state: State, current: int, expected: State) -> None:
    _, new_state = decide(history, DEFAULT, state, NOW, current)
    assert new_state == expected


def test_decide_is_pure() -> None:
    history = load((54, 2), (6, 20))
    state = State(last_busy=NOW - 100)
    first = decide(history, DEFAULT, state, NOW, 2)
    assert decide(tuple(history), DEFAULT, state, NOW, 2) == first
    assert state == State(last_busy=NOW - 100)


@pytest.mark.parametrize(
    ("knobs", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"min_containers": -1}, "min_containers"),
        ({"max_containers": 0}, "max_containers"),
        ({"min_containers": 5, "max_containers": 4}, "min_containers"),
        ({"idle_timeout": -1.0}, "idle_timeout"),
        ({"buffer": -1}, "buffer"),
        ({"target_utilization": 0.0}, "target_utilization"),
        ({"target_utilization": 1.5}, "target_utilization"),
        ({"stable_window": 0.0}, "stable_window"),
        ({"panic_window": 90.0}, "panic_window"),
        ({"panic_threshold": 0.5}, "panic_threshold"),
        ({"scale_down_delay": -1.0}, "scale_down_delay"),
    ],
)
def test_spec_names_the_bad_field(knobs: dict[str, float], field: str) -> None:
    with pytest.raises(SpecError) as err:
        ScalingSpec(**knobs)  # type: ignore[arg-type]
    assert field in err.value.errors
    assert repr(knobs[field]) in err.value.errors[field]


def test_observation_refuses_negative_counts() -> None:
    with pytest.raises(InvalidArgument, match="queued"):
        Observation(at=0.0, in_flight=0, queued=-1, ready=0, starting=0)


# Sequences: the Autoscaler second by second, the reconciler applying each decision.


def simulate(
    spec: ScalingSpec, demand: Callable[[int], int], seconds: int
) -> list[tuple[int, Decision]]:
    scaler = Autoscaler()
    current = 0
    out = []
    for t in range(seconds):
        capacity = current * spec.concurrency
        in_flight = min(demand(t), capacity)
        queued = demand(t) - in_flight
        scaler.observe(obs(float(t), in_flight, queued, ready=current))
        decision = scaler.decide(float(t), spec, current)
        out.append((current, decision))
        current = decision.desired
    return out


def test_burst_then_quiet() -> None:
    spec = ScalingSpec(idle_timeout=30)
    run = simulate(spec, lambda t: 20 if 10 <= t < 40 else 0, 200)
    desired = [d.desired for _, d in run]
    panic = [d.panic for _, d in run]
    assert desired[:10] == [0] * 10
    assert desired[10] >= 1
    assert panic[10]
    assert max(desired) == spec.max_containers
    assert desired[14:99] == [spec.max_containers] * 85  # held through the panic
    # The burst's last crossing was at t=39: panic ends a stable window later, by when
    # the idle timeout has long passed.
    assert panic.index(False, 10) == 99
    assert desired[99:] == [0] * 101


def test_ramp_without_panic() -> None:
    def demand(t: int) -> int:
        return min(t // 10, 12 - t // 10) if t < 120 else 0

    run = simulate(ScalingSpec(idle_timeout=30), demand, 300)
    desired = [d.desired for _, d in run]
    assert not any(d.panic for _, d in run)
    assert desired[:10] == [0] * 10
    peak = desired.index(max(desired))
    assert all(a <= b for a, b in itertools.pairwise(desired[: peak + 1]))
    assert 5 <= max(desired) <= 10
    assert desired[-1] == 0
    # Never fewer containers than calls in flight need while the load is on.
    assert all(desired[t] >= 1 for t in range(10, 120))


def test_min_and_buffer_survive_idle() -> None:
    spec = ScalingSpec(min_containers=1, buffer=1, idle_timeout=5)
    run = simulate(spec, lambda t: 3 if 5 <= t < 10 else 0, 120)
    assert run[-1][1].desired == 2
    assert run[-1][1].reason.startswith("idle")


def test_autoscaler_bounds_its_history() -> None:
    scaler = Autoscaler(max_samples=5)
    for t in range(10):
        scaler.observe(obs(float(t), in_flight=1))
    assert [o.at for o in scaler.history] == [5.0, 6.0, 7.0, 8.0, 9.0]
    scaler.decide(70.0, DEFAULT, current=1)
    assert scaler.history == ()  # all older than the stable window
    assert scaler.state.last_busy == 9.0  # ... but what they said is kept


def test_settle_keeps_the_state_and_forgets_old_samples() -> None:
    scaler = Autoscaler()
    for t in range(10):
        scaler.observe(obs(float(t), in_flight=1))
    scaler.settle(State(last_busy=9.0), forget_before=6.0)
    assert scaler.state == State(last_busy=9.0)
    assert [o.at for o in scaler.history] == [7.0, 8.0, 9.0]


def test_autoscalers_are_independent() -> None:
    busy, idle = Autoscaler(), Autoscaler()
    busy.observe(obs(1.0, queued=5))
    assert busy.decide(1.0, DEFAULT, current=0).desired > 0
    assert idle.history == ()
    decision = idle.decide(1.0, DEFAULT, current=0)
    assert (decision.desired, decision.panic) == (0, False)
    assert decision.reason.startswith("no observations")
    with pytest.raises(InvalidArgument, match="max_samples"):
        Autoscaler(max_samples=0)
