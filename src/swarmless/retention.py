"""Retention: how long and how many of each kind of row the store keeps.

Settings only (validated once): the store's sweeper (:mod:`swarmless.store.retention`)
acts on them. Each kind is kept by age **and** count, whichever deletes more; 0 turns a
limit off. ``Settings.retention`` builds one from the ``retention_*`` settings.
"""

from __future__ import annotations

import dataclasses
import math

from swarmless.exceptions import InvalidArgument

__all__ = ["KINDS", "Retention"]

#: What retention deletes: records of finished calls (with their logs, result and queue
#: row), logs, async results, dead letters.
KINDS = ("records", "logs", "results", "dead")
_DAY = 86400.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Retention:
    """How long (seconds) and how many of each kind of row the store keeps (0: no limit),
    and how often the sweeper runs::

        Retention(records_age=7 * 86400, records_count=100_000, interval=60)
    """

    records_age: float = 7 * _DAY
    records_count: int = 100_000
    logs_age: float = 1 * _DAY
    logs_count: int = 10_000
    results_age: float = 1 * _DAY
    results_count: int = 10_000
    dead_age: float = 14 * _DAY
    dead_count: int = 10_000
    interval: float = 60.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(f"retention {f.name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise InvalidArgument(
                    f"retention {f.name} must be >= 0 (0: no limit), got {value!r}"
                )
        if self.interval <= 0:
            raise InvalidArgument(f"retention interval must be > 0 s, got {self.interval!r}")

    def limits(self, kind: str) -> tuple[float, int]:
        """(age in seconds, count) of ``kind`` (one of :data:`KINDS`)."""
        return float(getattr(self, f"{kind}_age")), int(getattr(self, f"{kind}_count"))
