"""Prometheus metrics of one gateway, in a registry of its own (no global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from swarmless.records import InvocationRecord

__all__ = ["Metrics"]

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
        self.in_progress = Gauge(
            "swarmless_gateway_requests_in_progress",
            "Function requests being answered by this gateway.",
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
