"""What the scaling planner answers: a :class:`Plan`, the actions of one step with reasons.

Each action names what to do (start, retire, pause, thaw, kill, check, back off), to which
container, and why; the reconciler carries them out and keeps the plans, and ``describe``
shows them (:meth:`Plan.to_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from swarmless.scaling.policy import Decision, Observation, State

__all__ = [
    "Action",
    "BackOff",
    "Cause",
    "Check",
    "Kill",
    "Pause",
    "Plan",
    "Retire",
    "Start",
    "Thaw",
]

#: Why a container is retired or killed.
Cause = Literal["scale-down", "rollout", "drain-overdue", "start-timeout"]


@dataclass(frozen=True, kw_only=True)
class Start:
    """Start ``count`` containers of the current version."""

    kind: ClassVar[str] = "start"
    count: int
    reason: str

    def to_dict(self, at: float) -> dict[str, Any]:
        return {"action": self.kind, "count": self.count, "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class _OnWorker:
    kind: ClassVar[str] = ""
    worker: str
    reason: str

    def to_dict(self, at: float) -> dict[str, Any]:
        return {"action": self.kind, "worker": self.worker, "reason": self.reason}


@dataclass(frozen=True, kw_only=True)
class Retire(_OnWorker):
    """Drain a container: it finishes what it holds, then exits."""

    kind: ClassVar[str] = "retire"
    cause: Cause

    def to_dict(self, at: float) -> dict[str, Any]:
        return {**super().to_dict(at), "cause": self.cause}


@dataclass(frozen=True, kw_only=True)
class Pause(_OnWorker):
    """Freeze an idle container (the paused buffer)."""

    kind: ClassVar[str] = "pause"


@dataclass(frozen=True, kw_only=True)
class Thaw(_OnWorker):
    """Unfreeze a paused container: it takes queued calls."""

    kind: ClassVar[str] = "thaw"


@dataclass(frozen=True, kw_only=True)
class Kill(_OnWorker):
    """Stop a container now; with ``crash``, record ``reason`` as the pool's crash."""

    kind: ClassVar[str] = "kill"
    cause: Cause
    crash: bool = False

    def to_dict(self, at: float) -> dict[str, Any]:
        return {**super().to_dict(at), "cause": self.cause}


@dataclass(frozen=True, kw_only=True)
class Check(_OnWorker):
    """Ask the engine whether a silent container still runs (it is replaced if not)."""

    kind: ClassVar[str] = "check"


@dataclass(frozen=True, kw_only=True)
class BackOff:
    """Start nothing before ``until`` (monotonic), though containers are wanted."""

    kind: ClassVar[str] = "back-off"
    until: float
    reason: str

    def to_dict(self, at: float) -> dict[str, Any]:
        return {"action": self.kind, "for_s": round(self.until - at, 3), "reason": self.reason}


Action = Start | Retire | Pause | Thaw | Kill | Check | BackOff


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What to do at ``at``, and why."""

    at: float
    #: The policy's count (ready + starting + paused of the current version) and reason.
    decision: Decision
    actions: tuple[Action, ...]
    #: The sample this plan observed, and the policy's next state (None: pinned, the
    #: policy was not asked); the reconciler keeps both for the next snapshot.
    observation: Observation
    state: State | None

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``describe``."""
        return {
            "desired": self.decision.desired,
            "reason": self.decision.reason,
            "panic": self.decision.panic,
            "actions": [a.to_dict(self.at) for a in self.actions],
        }
