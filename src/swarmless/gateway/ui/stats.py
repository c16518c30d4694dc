"""What the dashboard computes from invocation records and container counts (pure).

Records come from the store, newest first and bounded (:data:`RECORD_LIMIT`); the numbers
cover the last hour of them. A function's latency is the whole of a call, from its arrival
to its end (``finished_at - queued_at``): the wait for a container, its start when cold, the
run. Container counts are not in the store: :class:`ContainerHistory` keeps samples of the
live ones, taken while the dashboard is in use.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from swarmless.records import InvocationRecord

__all__ = [
    "FAILED",
    "FINISHED",
    "HOUR_MS",
    "RECORD_LIMIT",
    "ContainerHistory",
    "FunctionStats",
    "container_states",
    "function_stats",
    "latency_ms",
    "percentile",
    "recent_failures",
    "series",
]

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
#: Records read for the numbers of the last hour, at most (newest first).
RECORD_LIMIT = 5000
FAILED = frozenset({"failed", "timeout", "dead"})
FINISHED = frozenset({"succeeded", "failed", "timeout", "dead", "cancelled"})
#: Container states the dashboard shows, in this order.
STATES = ("starting", "busy", "idle", "paused")


def latency_ms(rec: InvocationRecord) -> float | None:
    """Arrival to end of one finished call, ms; None while it runs."""
    if rec.finished_at is None or not rec.queued_at or rec.status not in FINISHED:
        return None
    return float(max(0, rec.finished_at - rec.queued_at))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of sorted ``values``; None if empty."""
    if not values:
        return None
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[min(rank, len(values)) - 1]


@dataclasses.dataclass(frozen=True)
class FunctionStats:
    """One function's last hour (and last minute, for the rate)."""

    calls_per_min: int = 0
    calls_hour: int = 0
    finished_hour: int = 0
    error_rate: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cold_share: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def function_stats(records: Iterable[InvocationRecord], now_ms: int) -> dict[str, FunctionStats]:
    """Calls in the last minute, error rate, p50/p99 latency and share of cold starts over
    the last hour, per function (error rate and cold share of finished calls)."""
    hour, minute = now_ms - HOUR_MS, now_ms - MINUTE_MS
    calls: dict[str, list[InvocationRecord]] = {}
    for r in records:
        if r.queued_at >= hour:
            calls.setdefault(r.function, []).append(r)
    out: dict[str, FunctionStats] = {}
    for name, recs in calls.items():
        finished = [r for r in recs if r.status in FINISHED]
        latencies = sorted(x for x in (latency_ms(r) for r in finished) if x is not None)
        colds = [r.cold for r in finished if r.cold is not None]
        out[name] = FunctionStats(
            calls_per_min=sum(1 for r in recs if r.queued_at >= minute),
            calls_hour=len(recs),
            finished_hour=len(finished),
            error_rate=(
                sum(1 for r in finished if r.status in FAILED) / len(finished) if finished else None
            ),
            p50_ms=percentile(latencies, 50),
            p99_ms=percentile(latencies, 99),
            cold_share=sum(colds) / len(colds) if colds else None,
        )
    return out


def recent_failures(
    records: Iterable[InvocationRecord], now_ms: int, window_ms: int = MINUTE_MS
) -> list[InvocationRecord]:
    """The calls that failed (failed, timed out, dead) in the last ``window_ms``."""
    since = now_ms - window_ms
    return [r for r in records if r.status in FAILED and (r.finished_at or r.queued_at) >= since]


def series(
    records: Iterable[InvocationRecord], now_ms: int, *, minutes: int = 60
) -> dict[str, list[Any]]:
    """Per minute of the last ``minutes``, oldest first: when it starts (``t``, epoch ms),
    calls that arrived, those of them that failed, and the p50/p99 latency of those that
    finished (None in a minute without one)."""
    start = (now_ms // MINUTE_MS - minutes + 1) * MINUTE_MS
    calls = [0] * minutes
    errors = [0] * minutes
    latencies: list[list[float]] = [[] for _ in range(minutes)]
    for r in records:
        i = (r.queued_at - start) // MINUTE_MS
        if not 0 <= i < minutes:
            continue
        calls[i] += 1
        if r.status in FAILED:
            errors[i] += 1
        lat = latency_ms(r)
        if lat is not None:
            latencies[i].append(lat)
    for bucket in latencies:
        bucket.sort()
    return {
        "t": [start + i * MINUTE_MS for i in range(minutes)],
        "calls": calls,
        "errors": errors,
        "p50": [percentile(b, 50) for b in latencies],
        "p99": [percentile(b, 99) for b in latencies],
    }


def container_states(counts: Mapping[str, int]) -> dict[str, int]:
    """A function's containers by state, from the dispatcher's counts: starting, busy,
    idle (ready and free), paused; one-shot and CGI calls running count as busy."""
    ready = counts.get("ready", 0)
    busy = counts.get("busy", 0)
    return {
        "starting": counts.get("starting", 0),
        "busy": busy,
        "idle": max(0, ready - busy),
        "paused": counts.get("paused", 0),
    }


class ContainerHistory:
    """Samples of every function's containers by state (bounded: the last ``keep``)."""

    def __init__(self, *, keep: int = 360) -> None:
        self._samples: deque[tuple[int, dict[str, dict[str, int]]]] = deque(maxlen=keep)

    def add(self, now_ms: int, snapshot: Mapping[str, Mapping[str, int]]) -> None:
        """Record the counts of ``snapshot`` (the gateway's, per function) at ``now_ms``."""
        self._samples.append((now_ms, {name: container_states(c) for name, c in snapshot.items()}))

    def since(self, since_ms: int, function: str | None = None) -> dict[str, list[int]]:
        """Samples at or after ``since_ms``: times ``t`` and one list per state, summed over
        every function (or ``function``'s alone)."""
        out: dict[str, list[int]] = {"t": [], **{s: [] for s in STATES}}
        for at, per in self._samples:
            if at < since_ms:
                continue
            out["t"].append(at)
            chosen = [per.get(function, {})] if function is not None else list(per.values())
            for state in STATES:
                out[state].append(sum(c.get(state, 0) for c in chosen))
        return out
