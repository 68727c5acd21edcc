"""Prometheus: a collector that reads a flow's metrics at scrape time.

    from prometheus_client import REGISTRY, generate_latest
    from aqueduct.metrics.prometheus import register
    register(flow)                      # once, after Flow(...)
    body = generate_latest(REGISTRY)   # what /metrics serves

The aiohttp and FastAPI integrations serve ``/metrics`` for you.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import REGISTRY, Collector

from .base import Histogram

if TYPE_CHECKING:
    from ..flow import Flow

__all__ = ["FlowCollector", "register"]


def _buckets(h: Histogram, scale: float) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    cumulative = 0
    for i, n in enumerate(h.buckets):
        cumulative += n
        out.append((repr(2**i * scale), cumulative))
    out.append(("+Inf", h.count))
    return out


class FlowCollector(Collector):
    """Exposes a flow's metrics; ``flow`` label tells flows apart."""

    def __init__(self, flow: Flow, flow_name: str = "flow", namespace: str = "aqueduct") -> None:
        self.flow = flow
        self.flow_name = flow_name
        self.ns = namespace

    def collect(self) -> Iterator[Any]:
        snapshot = self.flow.metrics()
        if snapshot is None:
            return
        ns, labels = self.ns, ["flow", "step"]
        histograms = {
            "handle_seconds": ("time handlers spent in handle()", "handle_us", 1e-6),
            "batch_seconds": ("time to assemble a batch", "batch_us", 1e-6),
            "transfer_seconds": ("time tasks waited in a queue", "transfer_us", 1e-6),
            "batch_size": ("tasks per batch", "batch_size", 1.0),
        }
        for name, (doc, attr, scale) in histograms.items():
            family = HistogramMetricFamily(f"{ns}_{name}", doc, labels=labels)
            for step in snapshot.steps:
                h: Histogram = getattr(step, attr)
                if h.count or attr != "handle_us":
                    family.add_metric(
                        [self.flow_name, step.name], _buckets(h, scale), h.sum * scale
                    )
            yield family
        dropped = CounterMetricFamily(
            f"{ns}_tasks_dropped", "tasks workers skipped", labels=[*labels, "reason"]
        )
        handled = CounterMetricFamily(f"{ns}_tasks_handled", "tasks handled", labels=labels)
        qsize = GaugeMetricFamily(f"{ns}_queue_size", "tasks waiting in a queue", labels=labels)
        for step in snapshot.steps:
            dropped.add_metric([self.flow_name, step.name, "expired"], step.expired)
            dropped.add_metric([self.flow_name, step.name, "cancelled"], step.cancelled)
            dropped.add_metric([self.flow_name, step.name, "rejected"], step.rejected)
            handled.add_metric([self.flow_name, step.name], step.handled)
            qsize.add_metric([self.flow_name, step.name], step.queue_size)
        yield dropped
        yield handled
        yield qsize
        workers = GaugeMetricFamily(
            f"{ns}_workers", "worker processes of a step", labels=[*labels, "state"]
        )
        for step in snapshot.steps[:-1]:  # the last is the result queue
            for state in ("running", "starting", "retiring"):
                count = getattr(step, f"workers_{state}")
                workers.add_metric([self.flow_name, step.name, state], count)
        yield workers
        tasks = CounterMetricFamily(
            f"{ns}_tasks", "how tasks given to process() ended", labels=["flow", "outcome"]
        )
        for outcome, value in snapshot.tasks.items():
            tasks.add_metric([self.flow_name, outcome], value)
        yield tasks
        memory = GaugeMetricFamily(
            f"{ns}_memory_bytes", "resident memory per process", labels=["flow", "process"]
        )
        for process, rss in snapshot.memory.items():
            memory.add_metric([self.flow_name, process], rss)
        yield memory


def register(flow: Flow, flow_name: str = "flow", registry: Any = REGISTRY) -> FlowCollector:
    """Registers a collector for ``flow`` with ``registry``; returns it."""
    collector = FlowCollector(flow, flow_name)
    registry.register(collector)
    return collector
