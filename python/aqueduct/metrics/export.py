"""Exporters: push metric deltas somewhere every ``export_period`` seconds."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from .base import AQUEDUCT, FlowMetrics

TRANSFER_TIME_PREFIX = "transfer_time"
HANDLE_TIME_PREFIX = "handle_time"
BATCH_TIME_PREFIX = "batch_time"
BATCH_SIZE_PREFIX = "batch_size"
QSIZE_PREFIX = "qsize"
TASKS_PREFIX = "tasks"
MEMORY_USAGE_PREFIX = "memory_usage"


class StatsDBuffer(Protocol):
    """What ``ToStatsDMetricsExporter`` writes to (e.g. a statsd client)."""

    def count(self, name: str, value: float | int) -> Any: ...

    def timing(self, name: str, value: float | int) -> Any: ...

    def gauge(self, name: str, value: float | int) -> Any: ...


class Exporter(ABC):
    """Receives, every ``export_period`` seconds, what changed since the last
    export (histograms and counters as deltas; sizes and memory as they are)."""

    def __init__(self, target: Any, export_period: float = 0.5, prefix: str | None = None) -> None:
        self.target = target
        self.export_period = export_period
        self.prefix = AQUEDUCT if prefix is None else f"{AQUEDUCT}.{prefix}"

    @abstractmethod
    def export(self, metrics: FlowMetrics) -> None: ...


class ToStatsDMetricsExporter(Exporter):
    """Upstream's StatsD names: ``<prefix>.handle_time.<step>`` and so on;
    times in milliseconds (the mean over the period), sizes as timings,
    task outcomes as counts, memory in bytes."""

    def export(self, metrics: FlowMetrics) -> None:
        p, target = self.prefix, self.target
        for step in metrics.steps:
            for prefix, histogram, scale in (
                (HANDLE_TIME_PREFIX, step.handle_us, 1e-3),
                (BATCH_TIME_PREFIX, step.batch_us, 1e-3),
                (TRANSFER_TIME_PREFIX, step.transfer_us, 1e-3),
                (BATCH_SIZE_PREFIX, step.batch_size, 1.0),
            ):
                if histogram.count:
                    target.timing(f"{p}.{prefix}.{step.name}", histogram.mean * scale)
            target.timing(f"{p}.{QSIZE_PREFIX}.{step.name}", step.queue_size)
            dropped = (("expired", step.expired), ("cancelled", step.cancelled))
            for outcome, value in (*dropped, ("rejected", step.rejected)):
                if value > 0:
                    target.count(f"{p}.{TASKS_PREFIX}.{step.name}.{outcome}", value)
        for outcome, value in metrics.tasks.items():
            if value > 0:
                target.count(f"{p}.{TASKS_PREFIX}.{outcome}", value)
        for name, rss in metrics.memory.items():
            target.timing(f"{p}.{MEMORY_USAGE_PREFIX}.{name}", rss)
