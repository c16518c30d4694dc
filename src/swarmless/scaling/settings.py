"""The scaling windows and thresholds, stated once (the gateway's settings carry them).

Every number the planner and the reconciler act on lives here, with its default; a
function's own knobs (concurrency, min/max containers, idle timeout, buffer) live in its
spec. :func:`~swarmless.scaling.planner.scaling_spec` combines the two.

>>> ScalingSettings(start_timeout=30).start_timeout
30
>>> ScalingSettings(backoff_base=1, backoff_max=30).backoff(6)
30
"""

from __future__ import annotations

from dataclasses import dataclass

from swarmless.exceptions import InvalidArgument

__all__ = ["ScalingSettings"]


@dataclass(frozen=True, kw_only=True)
class ScalingSettings:
    """Windows and thresholds of the autoscaler (seconds unless stated).

    Raises :class:`~swarmless.exceptions.InvalidArgument` naming every bad field.
    """

    #: Seconds between two reconcile steps (work that finds no container wakes it at once).
    interval: float = 1.0
    #: Seconds averaged for the stable decision, at most: a shorter ``idle_timeout`` of
    #: the function shortens it (never below ``panic_window``).
    stable_window: float = 60.0
    #: Seconds averaged for the panic decision.
    panic_window: float = 6.0
    #: Panic when panic-window demand reaches this many times the current capacity.
    panic_threshold: float = 2.0
    #: Aim for in-flight calls per container around ``concurrency`` times this.
    target_utilization: float = 0.7
    #: No scale-down sooner than this after a scale-up (a shorter ``idle_timeout`` wins).
    scale_down_delay: float = 10.0
    #: A container that has not asked for work this long after its start is killed, and
    #: counted as a crash.
    start_timeout: float = 60.0
    #: With ``paused_buffer``, a ready container idle this long is frozen.
    pause_after: float = 2.0
    #: A draining container still there this long after the function's timeout is killed.
    drain_grace: float = 5.0
    #: After a crash before a container was ready, no start for ``backoff_base``
    #: seconds, doubled at each further crash, up to ``backoff_max``.
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    #: Plans with actions kept for ``describe`` (the newest last).
    plan_history: int = 20

    def __post_init__(self) -> None:
        errors: list[str] = []

        def check(name: str, ok: bool, rule: str) -> None:
            if not ok:
                errors.append(f"{name} {rule}, got {getattr(self, name)!r}")

        check("interval", self.interval > 0, "must be more than 0 seconds")
        check("stable_window", self.stable_window > 0, "must be more than 0 seconds")
        check("panic_window", self.panic_window > 0, "must be more than 0 seconds")
        check(
            "panic_window",
            self.panic_window <= self.stable_window,
            f"must not exceed stable_window ({self.stable_window:g}s)",
        )
        check("panic_threshold", self.panic_threshold >= 1, "must be at least 1.0")
        check(
            "target_utilization",
            0 < self.target_utilization <= 1,
            "must be in (0, 1], e.g. 0.7 for 70%",
        )
        check("scale_down_delay", self.scale_down_delay >= 0, "must be at least 0 seconds")
        check("start_timeout", self.start_timeout > 0, "must be more than 0 seconds")
        check("pause_after", self.pause_after >= 0, "must be at least 0 seconds")
        check("drain_grace", self.drain_grace >= 0, "must be at least 0 seconds")
        check("backoff_base", self.backoff_base >= 0, "must be at least 0 seconds")
        check("backoff_max", self.backoff_max >= self.backoff_base, "must be at least backoff_base")
        check("plan_history", self.plan_history >= 1, "must be at least 1")
        if errors:
            raise InvalidArgument("scaling settings: " + "; ".join(errors))

    def backoff(self, crashes: int) -> float:
        """Seconds without a start after the ``crashes``-th crash in a row (0: none)."""
        if crashes <= 0:
            return 0.0
        # Capped before the power grows: a long crash loop must not overflow a float.
        return min(self.backoff_base * 2.0 ** min(crashes - 1, 64), self.backoff_max)
