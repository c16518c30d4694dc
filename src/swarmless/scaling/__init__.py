"""Scaling: the autoscaler policy (pure, :mod:`swarmless.scaling.policy`) and, beside it,
the reconciler that applies its decisions through a backend.

Only the policy lives here so far; it decides, it never acts.
"""

from swarmless.scaling.policy import (
    Autoscaler,
    Decision,
    Observation,
    ScalingSpec,
    State,
    decide,
)

__all__ = ["Autoscaler", "Decision", "Observation", "ScalingSpec", "State", "decide"]
