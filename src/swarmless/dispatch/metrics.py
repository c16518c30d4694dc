"""Prometheus metrics of one gateway, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from swarmless.records import InvocationRecord
from swarmless.store import StoreStats

__all__ = ["LiveGauges", "Metrics", "StoreGauges"]

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Counters and histograms the dispatcher feeds; gauges read live from a callback."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.invocations = Counter(
            "swarmless_invocations",
            "Invocations finished, by function, mode and status.",
            ["function", "mode", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "swarmless_invocation_duration_seconds",
            "Time from arrival to answer, by function.",
            ["function"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "swarmless_cold_starts",
            "Invocations that waited for a container to start.",
            ["function"],
            registry=self.registry,
        )
        self.scale_events = Counter(
            "swarmless_scale_events",
            "Containers started (up) or retired (down) by the reconciler.",
            ["function", "direction"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        self._store: StoreGauges | None = None
        self.in_progress = Gauge(
            "swarmless_gateway_requests_in_progress",
            "Function requests being answered by this gateway.",
            registry=self.registry,
        )
        self.waits = Gauge(
            "swarmless_gateway_waits_in_progress",
            "Requests held open until what they wait for happens, by kind (result: "
            "?wait= of a call's result, scale: a scale's wait, rollout: a deploy's).",
            ["kind"],
            registry=self.registry,
        )
        self.waits_abandoned = Counter(
            "swarmless_gateway_waits_abandoned",
            "Held requests whose client went away first (the wait was dropped), by kind.",
            ["kind"],
            registry=self.registry,
        )

    def observe(self, rec: InvocationRecord, seconds: float) -> None:
        # Labelled children are looked up once per label set, not once per call.
        key = (rec.function, rec.mode, rec.status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.invocations.labels(*key),
                self.duration.labels(rec.function),
                self.cold_starts.labels(rec.function),
            )
        children[0].inc()
        children[1].observe(seconds)
        if rec.cold:
            children[2].inc()

    def add_gauges(self, collect: LiveGauges) -> None:
        self.registry.register(collect)

    def watch_store(self, stats: Callable[[], StoreStats]) -> None:
        """Report the store's health, its write-behind buffer, the records it lost and
        the rows retention swept (read from ``stats`` at scrape time)."""
        if self._store is not None:
            self.registry.unregister(self._store)
        self._store = StoreGauges(stats)
        self.registry.register(self._store)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LiveGauges(Collector):
    """Container and queue gauges computed at scrape time from the dispatcher's state."""

    def __init__(self, snapshot: object) -> None:
        self._snapshot = snapshot

    def collect(self) -> list[GaugeMetricFamily]:
        containers = GaugeMetricFamily(
            "swarmless_containers",
            "Containers by function and state.",
            labels=["function", "state"],
        )
        queued = GaugeMetricFamily(
            "swarmless_queue_depth", "Calls waiting for a container.", labels=["function"]
        )
        in_flight = GaugeMetricFamily(
            "swarmless_in_flight", "Calls being served.", labels=["function"]
        )
        async_queued = GaugeMetricFamily(
            "swarmless_async_queue_depth",
            "Async calls waiting in the durable queue.",
            labels=["function"],
        )
        snapshot = self._snapshot() if callable(self._snapshot) else {}
        for name, c in snapshot.items():
            for state in ("starting", "ready", "busy", "draining", "paused"):
                containers.add_metric([name, state], c.get(state, 0))
            queued.add_metric([name], c.get("queued", 0))
            in_flight.add_metric([name], c.get("in_flight", 0))
            async_queued.add_metric([name], c.get("async_queued", 0))
        return [containers, queued, in_flight, async_queued]


class StoreGauges(Collector):
    """The store's health and bounds, read at scrape time."""

    def __init__(self, stats: Callable[[], StoreStats]) -> None:
        self._stats = stats

    def collect(self) -> list[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        lost = CounterMetricFamily(
            "swarmless_store_lost",
            "Rows dropped because the store's write-behind buffer was full (the database "
            "slow or away), by kind: the calls ran, their records or logs were not kept.",
            labels=["kind"],
        )
        lost.add_metric(["records"], s.lost_records)
        lost.add_metric(["logs"], s.lost_logs)
        swept = CounterMetricFamily(
            "swarmless_store_swept",
            "Rows deleted by retention, by kind (records, logs, results, dead).",
            labels=["kind"],
        )
        for kind, n in sorted(s.swept.items()):
            swept.add_metric([kind], n)
        return [
            GaugeMetricFamily(
                "swarmless_store_available",
                "1 while the store's database answers, 0 while it is away (503s).",
                value=1 if s.available else 0,
            ),
            GaugeMetricFamily(
                "swarmless_store_buffered",
                "Records and logs waiting in the write-behind buffer.",
                value=s.buffered,
            ),
            GaugeMetricFamily(
                "swarmless_store_waiting_writes",
                "Durable writes (accepted async calls, outcomes) waiting for a commit.",
                value=s.waiting_writes,
            ),
            GaugeMetricFamily(
                "swarmless_store_result_waiters",
                "Requests waiting for a call's result (?wait=).",
                value=s.watchers,
            ),
            lost,
            swept,
        ]
