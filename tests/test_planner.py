"""The scaling planner, table-driven: snapshots in, plans out; no Docker, no clock.

Each row of ``CASES`` is one :func:`swarmless.scaling.plan`: a snapshot of a pool (its
workers by state, age and version, queued calls, crashes, the policy's memory) and the
actions the plan must hold, in order, written short: ``("start", 2)``, ``("retire",
"w1", "scale-down")``, ``("pause", "w1")``, ``("thaw", "w1")``, ``("kill", "w1",
"rollout")``, ``("back-off", seconds)``. The policy's count table (tests/test_policy.py)
runs through the planner too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from swarmless.dispatch.pool import WarmPool
from swarmless.dispatch.pool_types import Call, Result, Worker
from swarmless.exceptions import InvalidArgument
from swarmless.records import InvocationRecord, new_call_id, now_ms
from swarmless.scaling import (
    Action,
    BackOff,
    Kill,
    Observation,
    Pause,
    Retire,
    ScalingSettings,
    Snapshot,
    Start,
    State,
    Thaw,
    WorkerView,
    decide,
    plan,
    scaling_spec,
)
from swarmless.scaling.planner import Check
from swarmless.spec import FunctionSpec
from tests.test_policy import CASES as POLICY_CASES
from tests.test_policy import Case as PolicyCase

NOW = 1000.0
SPEC = FunctionSpec(name="fn", image="python", mode="warm", handler="app:handle")
PAUSING = dataclasses.replace(SPEC, paused_buffer=True)
#: The policy remembers work 10 s ago: short of the idle timeout, it keeps one container.
RECENT = State(last_busy=NOW - 10)
#: ... 400 s ago: past the idle timeout, it wants none.
IDLE = State(last_busy=NOW - 400)


def w(
    id: str,
    state: str = "ready",
    *,
    version: int = 1,
    idle: float = 100.0,
    age: float = 200.0,
    calls: int = 0,
    used: bool = True,
    **kw: Any,
) -> WorkerView:
    """A worker ``idle`` seconds since its last call, started ``age`` seconds ago (with
    ``used=False``: one that never served a call, last heard ``idle`` seconds ago)."""
    return WorkerView(
        id=id,
        version=version,
        state=state,  # type: ignore[arg-type]
        created=NOW - age,
        last_active=NOW - idle,
        last_call=NOW - idle if used else None,
        calls=calls,
        **kw,
    )


def brief(action: Action) -> tuple[Any, ...]:
    match action:
        case Start():
            return ("start", action.count)
        case BackOff():
            return ("back-off", round(action.until - NOW, 3))
        case Retire() | Kill():
            return (action.kind, action.worker, action.cause)
        case Pause() | Thaw():
            return (action.kind, action.worker)
    raise AssertionError(action)


@dataclass(frozen=True)
class Case:
    workers: tuple[WorkerView, ...]
    actions: list[tuple[Any, ...]]
    spec: FunctionSpec = SPEC
    settings: ScalingSettings = field(default_factory=ScalingSettings)
    version: int = 1
    queued: int = 0
    state: State = RECENT
    pinned: int | None = None
    closing: bool = False
    crashes: int = 0
    last_crash: float | None = None
    #: A piece of the reason the first action must carry.
    reason: str = ""

    def snapshot(self) -> Snapshot:
        return Snapshot(
            now=NOW,
            version=self.version,
            workers=self.workers,
            queued=self.queued,
            state=self.state,
            pinned=self.pinned,
            closing=self.closing,
            crashes=self.crashes,
            last_crash=self.last_crash,
            crash_reason="it exited with status 1" if self.crashes else None,
        )


CASES = {
    # Steady: nothing to do.
    "one-kept-nothing-to-do": Case((w("a"),), []),
    "nothing-wanted-nothing-running": Case((), [], state=IDLE),
    # Size: start the difference, retire the least recently used idle, kill paused surplus.
    "start-for-queued": Case((), [("start", 3)], queued=3, reason="0 -> 3: panic"),
    "one-start-for-a-lone-call": Case((), [("start", 1)], queued=1, reason="0 -> 1"),
    "no-second-start-while-starting": Case((w("s", "starting", age=1),), [], queued=1),
    "pinned-starts-exactly": Case((), [("start", 3)], pinned=3, reason="pinned to 3"),
    "retire-least-recently-used": Case(
        (w("a", idle=20), w("b", idle=90), w("c", idle=50), w("d", idle=5)),
        [
            ("retire", "b", "scale-down"),
            ("retire", "c", "scale-down"),
            ("retire", "a", "scale-down"),
        ],
        reason="4 -> 1, least recently used (idle 90s)",
    ),
    # A container that never served goes first, however recently it polled (its polls are
    # not use): the one that just served stays.
    "never-used-retired-before-the-one-that-served": Case(
        (w("served", idle=30), w("fresh", idle=0, age=40, used=False)),
        [("retire", "fresh", "scale-down")],
        pinned=1,
        reason="2 -> 1, never used",
    ),
    "never-used-oldest-first-then-lru": Case(
        (
            w("a", idle=90),
            w("n1", idle=1, age=10, used=False),
            w("n2", idle=1, age=50, used=False),
            w("b", idle=20),
        ),
        [
            ("retire", "n2", "scale-down"),
            ("retire", "n1", "scale-down"),
            ("retire", "a", "scale-down"),
        ],
        pinned=1,
    ),
    "busy-never-retired": Case(
        (w("a", calls=1), w("b", calls=1), w("c")), [("retire", "c", "scale-down")], pinned=1
    ),
    "paused-killed-after-idle-retired": Case(
        (w("a"), w("p1", "paused"), w("p2", "paused")),
        [("retire", "a", "scale-down"), ("kill", "p1", "scale-down")],
        pinned=1,
    ),
    "starting-counts-never-retired": Case((w("s", "starting", age=1),), [], pinned=0),
    "closing-starts-nothing": Case((), [], queued=3, closing=True),
    "closing-still-scales-down": Case(
        (w("a"), w("b", idle=5)), [("retire", "a", "scale-down")], pinned=1, closing=True
    ),
    # Thaw: one paused container per `concurrency` queued calls, never one already thawing.
    "thaw-per-concurrency": Case(
        (w("p1", "paused"), w("p2", "paused"), w("p3", "paused")),
        [("thaw", "p1"), ("thaw", "p2")],
        spec=dataclasses.replace(PAUSING, concurrency=2),
        queued=3,
        reason="3 queued: thawing",
    ),
    "thawing-not-thawed-twice": Case(
        (w("p1", "paused", thawing=True), w("p2", "paused")), [("thaw", "p2")], queued=1
    ),
    "no-thaw-without-queue": Case((w("p1", "paused"),), []),
    "surplus-spares-the-thawed": Case(
        (w("p1", "paused"), w("p2", "paused")),
        [("thaw", "p1"), ("kill", "p2", "scale-down")],
        queued=1,
        pinned=0,
    ),
    "old-paused-not-thawed": Case(
        (w("p1", "paused", version=1),), [("start", 1)], version=2, queued=1
    ),
    # Pause: with paused_buffer, an idle ready container after pause_after, at steady size.
    "pause-idle": Case((w("a", idle=5),), [("pause", "a")], spec=PAUSING, reason="idle 5s >= 2s"),
    "pause-not-yet": Case((w("a", idle=1),), [], spec=PAUSING),
    "pause-after-is-a-setting": Case(
        (w("a", idle=5),), [], spec=PAUSING, settings=ScalingSettings(pause_after=10)
    ),
    "pause-spares-the-busy": Case(
        (w("a", calls=1), w("b", idle=5)), [("pause", "b")], spec=PAUSING
    ),
    "pause-only-with-paused-buffer": Case((w("a", idle=5),), []),
    "pause-not-while-scaling-down": Case(
        (w("a", idle=5), w("b", idle=9)), [("retire", "b", "scale-down")], spec=PAUSING
    ),
    # Rollout: once a container of the new version is ready, or none is wanted.
    "rollout-once-new-ready": Case(
        (
            w("old", version=1),
            w("olds", "starting", version=1),
            w("oldp", "paused", version=1),
            w("new", version=2),
        ),
        [("retire", "old", "rollout"), ("retire", "olds", "rollout"), ("kill", "oldp", "rollout")],
        version=2,
        reason="rollout: version 1 replaced by 2",
    ),
    "rollout-waits-for-new-ready": Case(
        (w("old", version=1, calls=1), w("new", "starting", version=2, age=1)),
        [("start", 1)],
        version=2,
    ),
    "rollout-when-none-wanted": Case(
        (w("old", version=1),), [("retire", "old", "rollout")], version=2, state=IDLE
    ),
    "rollout-leaves-draining-alone": Case(
        (w("old", "draining", version=1, draining_since=NOW - 1), w("new", version=2)),
        [],
        version=2,
    ),
    # Reap: a drain past timeout + drain_grace, a start that never asked for work.
    "drain-overdue-killed": Case(
        (w("d", "draining", draining_since=NOW - 36),),
        [("kill", "d", "drain-overdue")],
        reason="draining 36s > 35s (timeout 30s + 5s)",
    ),
    "drain-within-grace": Case((w("d", "draining", draining_since=NOW - 35),), []),
    "drain-grace-is-a-setting": Case(
        (w("d", "draining", draining_since=NOW - 32),),
        [("kill", "d", "drain-overdue")],
        settings=ScalingSettings(drain_grace=1),
    ),
    "drain-not-begun-here-never-reaped": Case((w("d", "draining"),), []),
    "start-timeout-killed-as-crash": Case(
        (w("s", "starting", age=61),),
        [("kill", "s", "start-timeout")],
        reason="function 'fn': a container did not ask for work within 60s of its start",
    ),
    "start-in-time": Case((w("s", "starting", age=59),), []),
    "start-timeout-is-a-setting": Case(
        (w("s", "starting", age=11),),
        [("kill", "s", "start-timeout")],
        settings=ScalingSettings(start_timeout=10),
    ),
    "start-without-container-not-reaped": Case(
        (w("s", "starting", age=600, has_container=False),), []
    ),
    "rollout-wins-over-start-timeout": Case(
        (w("old", "starting", version=1, age=100), w("new", version=2)),
        [("retire", "old", "rollout")],
        version=2,
    ),
    # Crash backoff: base * 2**(crashes - 1) seconds after the last crash, at most max.
    "backoff-after-a-crash": Case(
        (), [("back-off", 0.5)], queued=1, crashes=1, last_crash=NOW - 0.5, reason="1 crash(es)"
    ),
    "backoff-doubles": Case((), [("back-off", 1.0)], queued=1, crashes=3, last_crash=NOW - 3),
    "backoff-capped": Case((), [("back-off", 1.0)], queued=1, crashes=10, last_crash=NOW - 29),
    "backoff-over": Case((), [("start", 1)], queued=1, crashes=3, last_crash=NOW - 4),
    "backoff-is-a-setting": Case(
        (),
        [("back-off", 2.0)],
        settings=ScalingSettings(backoff_base=5),
        queued=1,
        crashes=1,
        last_crash=NOW - 3,
    ),
    "backoff-never-holds-a-scale-down": Case(
        (w("a"), w("b", idle=5)),
        [("retire", "a", "scale-down")],
        pinned=1,
        crashes=4,
        last_crash=NOW,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan(case: Case) -> None:
    p = plan(case.snapshot(), case.spec, case.settings)
    assert [brief(a) for a in p.actions] == case.actions, p.decision.reason
    if case.reason:
        assert case.reason in p.actions[0].reason


# The policy's count table, through the planner: the same decision, and the actions that
# reach it (its history ending at NOW is the planner's own observation).
THROUGH_PLAN = {k: c for k, c in POLICY_CASES.items() if any(o.at == NOW for o in c.history)}


@pytest.mark.parametrize("case", THROUGH_PLAN.values(), ids=THROUGH_PLAN.keys())
def test_policy_table_through_plan(case: PolicyCase) -> None:
    last = next(o for o in case.history if o.at == NOW)  # the planner observes it
    earlier = tuple(o for o in case.history if o is not last)
    # `current` ready workers, the calls in flight dealt one at a time.
    calls = (
        [
            last.in_flight // case.current + (i < last.in_flight % case.current)
            for i in range(case.current)
        ]
        if case.current
        else []
    )
    workers = tuple(w(f"w{i}", calls=n, idle=i) for i, n in enumerate(calls))
    spec = dataclasses.replace(
        SPEC,
        concurrency=case.spec.concurrency,
        min_containers=case.spec.min_containers,
        max_containers=case.spec.max_containers,
        idle_timeout=case.spec.idle_timeout,
        buffer=case.spec.buffer,
    )
    settings = ScalingSettings(
        target_utilization=case.spec.target_utilization,
        scale_down_delay=case.spec.scale_down_delay,
        stable_window=case.spec.stable_window,
        panic_window=case.spec.panic_window,
    )
    if spec.idle_timeout < case.spec.stable_window:
        pytest.skip("a short idle timeout shortens the stable window (scaling_spec)")
    snap = Snapshot(
        now=NOW, version=1, workers=workers, queued=last.queued, history=earlier, state=case.state
    )
    p = plan(snap, spec, settings)

    assert p.observation == dataclasses.replace(last, ready=case.current)
    expected, state = decide(case.history, case.spec, case.state, NOW, case.current)
    assert (p.decision, p.state) == (expected, state)
    assert (p.decision.desired, p.decision.panic) == (case.desired, case.panic)
    idle = sum(1 for n in calls if n == 0)
    if case.desired > case.current:
        assert [brief(a) for a in p.actions] == [("start", case.desired - case.current)]
    else:
        retired = min(case.current - case.desired, idle)
        assert [brief(a)[0] for a in p.actions] == ["retire"] * retired


def test_only_rows_without_a_sample_at_now_stay_out() -> None:
    """The planner always observes ``now``: rows about an empty or stale history are the
    policy's alone."""
    assert set(POLICY_CASES) - set(THROUGH_PLAN) == {
        "empty-history-keeps-current",
        "empty-history-clamped-to-max",
        "empty-history-clamped-to-min",
        "stale-history-keeps-current",
        "no-sample-in-panic-window",
    }


def test_plan_is_pure() -> None:
    snap = CASES["rollout-once-new-ready"].snapshot()
    first = plan(snap, SPEC)
    assert plan(snap, SPEC) == first
    assert snap == CASES["rollout-once-new-ready"].snapshot()


def test_observation_counts_thawing_as_starting() -> None:
    snap = Snapshot(
        now=NOW,
        version=2,
        workers=(
            w("r", version=2, calls=2),
            w("s", "starting", version=2),
            w("p", "paused", version=2),
            w("t", "paused", version=2, thawing=True),
            w("d", "draining", version=2, calls=1),
            w("old"),
        ),
        queued=4,
    )
    obs = plan(snap, SPEC).observation
    assert (obs.ready, obs.starting, obs.paused, obs.in_flight, obs.queued) == (1, 2, 1, 3, 4)


def test_pinned_leaves_the_policy_alone() -> None:
    p = plan(Snapshot(now=NOW, version=1, pinned=2, state=RECENT), SPEC)
    assert p.state is None
    assert p.decision.reason == "pinned to 2"
    free = plan(Snapshot(now=NOW, version=1, state=RECENT), SPEC)
    assert free.state is not None


def test_plan_to_dict() -> None:
    p = plan(CASES["backoff-after-a-crash"].snapshot(), SPEC)
    d = p.to_dict()
    assert d["desired"] == 1
    assert not d["panic"]
    assert d["actions"] == [
        {"action": "back-off", "for_s": 0.5, "reason": p.actions[0].reason},
    ]
    p = plan(CASES["rollout-once-new-ready"].snapshot(), SPEC)
    assert p.to_dict()["actions"][0] == {
        "action": "retire",
        "worker": "old",
        "cause": "rollout",
        "reason": "rollout: version 1 replaced by 2",
    }


def test_crash_loop_backs_off_doubling_to_the_cap() -> None:
    """A container that always crashes before it is ready: starts at 0, 2, 5, 10, ...

    Each start crashes a tick later; the n-th crash in a row holds starts for 2**(n-1)
    seconds, at most 30.
    """
    spec = dataclasses.replace(SPEC, concurrency=2)  # one queued call wants one container
    starting: tuple[WorkerView, ...] = ()
    crashes, last_crash, starts = 0, None, []
    history: tuple[Any, ...] = ()
    state = State()
    for t in range(120):
        now = float(t)
        if starting:  # what started last tick crashed before asking for work
            crashes, last_crash, starting = crashes + 1, now, ()
        snap = Snapshot(
            now=now,
            version=1,
            workers=starting,
            queued=1,
            history=history,
            state=state,
            crashes=crashes,
            last_crash=last_crash,
        )
        p = plan(snap, spec)
        history, state = (*history, p.observation)[-60:], p.state or state
        for a in p.actions:
            assert isinstance(a, Start | BackOff), a
            if isinstance(a, Start):
                assert a.count == 1
                starts.append(t)
                starting = (
                    WorkerView(
                        id=f"s{t}", version=1, state="starting", created=now, last_active=now
                    ),
                )
    assert starts == [0, 2, 5, 10, 19, 36, 67, 98]


def test_scaling_spec_takes_the_settings() -> None:
    settings = ScalingSettings(
        stable_window=30,
        panic_window=3,
        panic_threshold=3,
        target_utilization=0.5,
        scale_down_delay=20,
    )
    s = scaling_spec(dataclasses.replace(SPEC, idle_timeout=15), settings)
    assert (s.stable_window, s.panic_window, s.panic_threshold) == (15, 3, 3)
    assert (s.target_utilization, s.scale_down_delay) == (0.5, 15)
    s = scaling_spec(dataclasses.replace(SPEC, idle_timeout=0), settings)
    assert (s.stable_window, s.scale_down_delay) == (3, 0)  # never below the panic window
    s = scaling_spec(SPEC)  # the defaults
    assert (s.stable_window, s.panic_window, s.scale_down_delay) == (60, 6, 10)


@pytest.mark.parametrize(
    ("knobs", "name"),
    [
        ({"interval": 0}, "interval"),
        ({"stable_window": 0}, "stable_window"),
        ({"panic_window": 90}, "panic_window"),
        ({"panic_threshold": 0.5}, "panic_threshold"),
        ({"target_utilization": 1.5}, "target_utilization"),
        ({"scale_down_delay": -1}, "scale_down_delay"),
        ({"start_timeout": 0}, "start_timeout"),
        ({"pause_after": -1}, "pause_after"),
        ({"drain_grace": -1}, "drain_grace"),
        ({"backoff_base": -1}, "backoff_base"),
        ({"backoff_max": 0.5}, "backoff_max"),
        ({"plan_history": 0}, "plan_history"),
    ],
)
def test_settings_name_the_bad_field(knobs: dict[str, float], name: str) -> None:
    with pytest.raises(InvalidArgument, match=f"{name} .*got {knobs[name]!r}"):
        ScalingSettings(**knobs)  # type: ignore[arg-type]


def test_backoff_is_bounded_for_long_crash_loops() -> None:
    s = ScalingSettings()
    assert [s.backoff(n) for n in range(7)] == [0, 1, 2, 4, 8, 16, 30]
    assert s.backoff(10_000) == 30


def test_snapshot_refuses_negative_counts() -> None:
    with pytest.raises(InvalidArgument, match="queued"):
        Snapshot(now=NOW, version=1, queued=-1)
    with pytest.raises(InvalidArgument, match="pinned"):
        Snapshot(now=NOW, version=1, pinned=-2)


def test_the_gateway_settings_carry_the_scaling_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    from swarmless.config import Settings

    monkeypatch.setenv("SWARMLESS_SCALE_PANIC_WINDOW", "3")
    settings = Settings.load(scale_start_timeout=12, scale_down_delay="4", scale_plan_history="5")
    scaling = settings.scaling
    assert scaling.panic_window == 3.0
    assert scaling.start_timeout == 12.0
    assert scaling.scale_down_delay == 4.0
    assert scaling.plan_history == 5
    with pytest.raises(InvalidArgument, match="scale_interval"):
        Settings.load(scale_interval="soon")


# -- the engine away, and workers whose death went unheard -----------------------------------


def test_nothing_starts_while_the_engine_does_not_answer() -> None:
    snap = Snapshot(now=NOW, version=1, queued=3, state=RECENT, engine_down="Connection refused")
    actions = plan(snap, SPEC).actions
    assert [a.kind for a in actions] == ["back-off"]
    assert "does not answer (Connection refused)" in actions[0].reason


def test_no_start_timeout_kill_while_the_engine_does_not_answer() -> None:
    stuck = w("w1", "starting", age=100)
    assert [a.kind for a in plan(Snapshot(now=NOW, version=1, workers=(stuck,)), SPEC).actions] == [
        "kill"
    ]
    away = Snapshot(now=NOW, version=1, workers=(stuck,), engine_down="gone")
    assert "kill" not in [a.kind for a in plan(away, SPEC).actions]


def test_a_silent_idle_ready_worker_is_checked_once_per_silent_after() -> None:
    workers = (
        w("quiet", idle=40),
        w("polling", idle=40, polling=True),
        w("busy", idle=40, calls=1),
        w("recent", idle=10),
        w("checked", idle=40, checked_at=NOW - 10),
        w("paused", "paused", idle=40),
    )
    snap = Snapshot(now=NOW, version=1, workers=workers, pinned=6, silent_after=35)
    checks = [a for a in plan(snap, SPEC).actions if isinstance(a, Check)]
    assert [a.worker for a in checks] == ["quiet"]
    assert "no poll for 40s > 35s" in checks[0].reason
    for away in (
        dataclasses.replace(snap, engine_down="gone"),
        dataclasses.replace(snap, silent_after=None),
    ):
        assert not [a for a in plan(away, SPEC).actions if isinstance(a, Check)]


def _answered_lone_call(**snap: Any) -> Snapshot:
    """A lone call queued for three seconds (its container slow to start), then served and
    answered: the stable average is still 0.75, the policy's count 2."""
    history = tuple(
        Observation(at=NOW - 4 + i, in_flight=0, queued=1, ready=0, starting=1) for i in range(3)
    )
    fields: dict[str, Any] = {
        "now": NOW,
        "version": 1,
        "workers": (w("a", idle=0.5, age=4),),
        "history": history,
        "state": State(last_busy=NOW - 1),
        **snap,
    }
    return Snapshot(**fields)


def test_no_start_for_no_work() -> None:
    p = plan(_answered_lone_call(), SPEC)
    assert p.actions == ()
    assert p.decision.desired == 1
    assert "nothing in flight or queued: no start, holding 1" in p.decision.reason
    # the policy alone would have said 2: no scale-up happened, none is remembered
    assert (
        decide(
            (*_answered_lone_call().history, p.observation),
            scaling_spec(SPEC),
            State(last_busy=NOW - 1),
            NOW,
            1,
        )[0].desired
        == 2
    )
    assert p.state is not None
    assert p.state.last_scale_up is None


def test_no_work_still_starts_the_floor() -> None:
    spec = dataclasses.replace(SPEC, buffer=1)
    p = plan(_answered_lone_call(workers=()), spec)
    assert [brief(a) for a in p.actions] == [("start", 1)]


def test_a_crash_is_still_retried_without_work() -> None:
    """The back-off's retries are how a crashed function comes back: held only without a
    crash."""
    p = plan(_answered_lone_call(workers=(), crashes=1, last_crash=NOW - 30), SPEC)
    assert [brief(a) for a in p.actions] == [("start", 2)]


def test_the_pool_tells_the_planner_which_container_served() -> None:
    """WarmPool sets ``last_call`` when a call is handed over and answered, and nothing
    else does (a poll refreshes ``last_active`` only): after one call, the container that
    never served is the one the scale-down retires, though it polled last."""

    async def scenario() -> tuple[Worker, Worker]:
        pool = WarmPool(SPEC, 1)
        served, idle = (Worker(id=i, token=i, function="fn", version=1) for i in ("s", "i"))
        for worker in (served, idle):
            pool.add_worker(worker)
            assert pool.take(worker) is None  # ready, nothing queued
        rec = InvocationRecord(id=new_call_id(), function="fn", mode="warm", queued_at=now_ms())
        deadline = time.monotonic() + 60
        call = Call(
            record=rec,
            event=b"{}",
            body=b"",
            deadline=deadline,
            deadline_ms=now_ms() + 60_000,
            future=asyncio.get_running_loop().create_future(),
        )
        pool.submit(call)
        assert pool.take(served) is call
        pool.complete(served, call.id, Result(status=200, headers=[], body=b""))
        assert pool.take(idle) is None  # it polls again, after the call ended
        return served, idle

    served, idle = asyncio.run(scenario())
    assert served.last_call is not None
    assert idle.last_call is None
    assert idle.last_active >= served.last_active
    workers = tuple(
        WorkerView(
            id=w.id,
            version=1,
            state="ready",
            created=w.created,
            last_active=w.last_active,
            last_call=w.last_call,
        )
        for w in (served, idle)
    )
    now = max(w.last_active for w in workers) + 1
    p = plan(Snapshot(now=now, version=1, workers=workers, pinned=1), SPEC, ScalingSettings())
    assert [brief(a) for a in p.actions] == [("retire", "i", "scale-down")]
