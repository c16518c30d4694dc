"""The world as the scaling planner sees it: one warm pool's containers at one moment.

A :class:`Snapshot` is what the reconciler (:mod:`swarmless.scaling.reconciler`) observed
and what the autoscaler remembers; :func:`swarmless.scaling.planner.plan` reads nothing
else. Times are monotonic seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from swarmless.exceptions import InvalidArgument
from swarmless.scaling.policy import Observation, State

__all__ = ["Snapshot", "WorkerState", "WorkerView"]

WorkerState = Literal["starting", "ready", "paused", "draining", "gone"]


@dataclass(frozen=True, kw_only=True)
class WorkerView:
    """One container of the pool, as observed (monotonic seconds)."""

    id: str
    version: int
    state: WorkerState
    created: float
    #: When it was last heard from (a poll, a call, a heartbeat).
    last_active: float
    #: When it was last handed a call or answered one (None: it never served one). The
    #: scale-down retires never-used containers first, then the least recently used.
    last_call: float | None = None
    #: Calls it holds right now.
    calls: int = 0
    #: Its container id is known (a start still in progress has none yet).
    has_container: bool = True
    #: Paused, and a thaw was asked for already.
    thawing: bool = False
    #: When the reconciler began to drain it (None: not by the reconciler).
    draining_since: float | None = None
    #: A poll of its waits for work right now (it is alive as far as the gateway knows).
    polling: bool = False
    #: When the reconciler last asked the engine about it (None: never).
    checked_at: float | None = None

    @property
    def busy(self) -> bool:
        return self.calls > 0


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    """One warm pool at ``now``, and what the autoscaler remembers."""

    now: float
    #: The function's current version; workers of another are rolled out.
    version: int
    workers: tuple[WorkerView, ...] = ()
    #: Calls waiting for a container.
    queued: int = 0
    #: Earlier observations (the planner adds the one of ``now``) and the policy's state.
    history: tuple[Observation, ...] = ()
    state: State = field(default_factory=State)
    #: ``swarmless scale NAME N``: exactly N, no policy.
    pinned: int | None = None
    #: The gateway is shutting down: start nothing.
    closing: bool = False
    #: Crashes in a row before a container was ready, the last one's time and message.
    crashes: int = 0
    last_crash: float | None = None
    crash_reason: str | None = None
    #: Why the engine does not answer (None: it does): nothing starts, nothing is checked.
    engine_down: str | None = None
    #: Seconds without a poll after which an idle ready container is checked (None: never).
    silent_after: float | None = None

    def __post_init__(self) -> None:
        for name in ("queued", "crashes"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"Snapshot.{name} must be at least 0")
        if self.pinned is not None and self.pinned < 0:
            raise InvalidArgument(f"Snapshot.pinned must be at least 0, got {self.pinned!r}")

    @property
    def in_flight(self) -> int:
        """Calls being served right now."""
        return sum(w.calls for w in self.workers)
