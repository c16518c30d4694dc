"""Scaling, planned then acted on.

- :mod:`~swarmless.scaling.policy`: how many containers a function wants (pure, KPA-style);
- :mod:`~swarmless.scaling.planner`: from a snapshot of a pool, a plan of actions (start,
  retire, pause, thaw, kill, back off), each with its reason (pure); what it reads in
  :mod:`~swarmless.scaling.snapshot`, what it answers in :mod:`~swarmless.scaling.actions`;
- :mod:`~swarmless.scaling.settings`: the windows and thresholds both act on;
- :mod:`~swarmless.scaling.reconciler`: carries plans out through the pool and the backend,
  and records them (imported on its own: it needs the dispatcher).
"""

from swarmless.scaling.planner import (
    Action,
    BackOff,
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
from swarmless.scaling.policy import (
    Autoscaler,
    Decision,
    Observation,
    ScalingSpec,
    State,
    decide,
)
from swarmless.scaling.settings import ScalingSettings

__all__ = [
    "Action",
    "Autoscaler",
    "BackOff",
    "Decision",
    "Kill",
    "Observation",
    "Pause",
    "Plan",
    "Retire",
    "ScalingSettings",
    "ScalingSpec",
    "Snapshot",
    "Start",
    "State",
    "Thaw",
    "WorkerView",
    "decide",
    "plan",
    "scaling_spec",
]
