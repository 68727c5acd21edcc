"""Metric snapshots as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum

AQUEDUCT = "aqueduct"
MAIN_PROCESS = "main_process"


class MetricsTypes(Enum):
    """The kinds of metrics a snapshot holds (upstream's names)."""

    TASK_TIMERS = "task_timers"
    QUEUE_SIZE = "queue_size"
    TASKS = "tasks"
    MEMORY_USAGE = "memory_usage"


@dataclass
class Histogram:
    """A log2 histogram: ``buckets[i]`` counts values below ``2**i`` (and at
    least ``2**(i-1)``), in the metric's unit (µs for times)."""

    count: int = 0
    sum: int = 0
    buckets: list[int] = field(default_factory=list)

    @classmethod
    def from_raw(cls, raw: tuple[int, int, list[int]]) -> Histogram:
        count, total, buckets = raw
        return cls(count, total, list(buckets))

    def __sub__(self, other: Histogram) -> Histogram:
        theirs = other.buckets or [0] * len(self.buckets)
        buckets = [a - b for a, b in zip(self.buckets, theirs, strict=True)]
        return Histogram(self.count - other.count, self.sum - other.sum, buckets)

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the ``q`` quantile."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return float(2**i)
        return float(2 ** (len(self.buckets) - 1))


_GAUGES = ("name", "queue_size", "workers_running", "workers_starting", "workers_retiring")


@dataclass
class StepMetrics:
    """What one step recorded (cumulative since the flow started)."""

    name: str
    handle_us: Histogram
    batch_us: Histogram
    batch_size: Histogram
    transfer_us: Histogram
    handled: int
    expired: int
    cancelled: int
    #: Tasks refused because they could no longer make their latency objective.
    rejected: int
    queue_size: int
    #: Its worker processes now: serving, starting, and finishing their
    #: tasks before they exit (replaced, or an elastic step shrinking).
    workers_running: int = 0
    workers_starting: int = 0
    workers_retiring: int = 0

    def __sub__(self, other: StepMetrics) -> StepMetrics:
        """What was recorded since ``other``; sizes and worker counts are
        this one's."""
        recorded = {
            f.name: getattr(self, f.name) - getattr(other, f.name)
            for f in fields(self)
            if f.name not in _GAUGES
        }
        gauges = {name: getattr(self, name) for name in _GAUGES}
        return StepMetrics(**gauges, **recorded)

    def zero(self) -> StepMetrics:
        """The same step with nothing recorded."""
        return self - self


@dataclass
class FlowMetrics:
    """A snapshot of a flow's metrics. ``steps`` ends with the result queue
    (named ``MAIN_PROCESS``: its transfer time is the last hop back)."""

    steps: list[StepMetrics]
    tasks: dict[str, int]
    memory: dict[str, int]  # RSS bytes per process: MAIN_PROCESS, then step names

    def zero(self) -> FlowMetrics:
        """The same shape with nothing recorded (a baseline for deltas)."""
        return FlowMetrics([s.zero() for s in self.steps], dict.fromkeys(self.tasks, 0), {})

    def __sub__(self, other: FlowMetrics) -> FlowMetrics:
        return FlowMetrics(
            [a - b for a, b in zip(self.steps, other.steps, strict=False)],
            {k: v - other.tasks.get(k, 0) for k, v in self.tasks.items()},
            self.memory,
        )
