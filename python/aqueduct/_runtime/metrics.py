"""A flow's metrics: reading what steps recorded in shared memory into a
:class:`FlowMetrics`, and handing an exporter what changed every period."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from typing import Any

from .. import _core
from ..logger import log
from ..metrics import (
    MAIN_PROCESS,
    Collector,
    Exporter,
    FlowMetrics,
    Histogram,
    MetricsTypes,
    StepMetrics,
)
from .worker_process import WorkerProcess

__all__ = ["export_periodically", "processes", "snapshot"]


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (0 when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def processes(workers: Iterable[WorkerProcess]) -> list[tuple[str, int]]:
    """``(label, pid)`` of this process (``MAIN_PROCESS``) and each worker
    (its step's name, numbered when the step has several)."""
    out = [(MAIN_PROCESS, os.getpid())]
    for w in workers:
        label = w.step_name if w.spec.nprocs == 1 else f"{w.step_name}_{w.number}"
        if w.process is not None and w.process.pid:
            out.append((label, w.process.pid))
    return out


def snapshot(
    *,
    control: _core.Control,
    step_names: list[str],
    queues: list[_core.Queue],
    collector: Collector,
    workers: Iterable[WorkerProcess],
    task_counts: dict[str, int],
) -> FlowMetrics:
    """What the flow recorded since it started: per step (and, as
    ``MAIN_PROCESS``, the result queue) handle, batch and queue times, batch
    sizes, tasks handled / expired / cancelled, queue sizes; how tasks
    ended; resident memory per process."""
    steps = []
    for index, name in enumerate([*step_names, MAIN_PROCESS]):
        raw = control.metrics(index)
        if raw is None:
            continue
        queue_size = 0
        if index < len(queues) and collector.is_collectible(MetricsTypes.QUEUE_SIZE):
            queue_size = len(queues[index])
        # the fields are the core's (STEP_HISTOGRAMS, STEP_COUNTERS)
        recorded: dict[str, Any] = {n: Histogram.from_raw(raw[n]) for n in _core.STEP_HISTOGRAMS}
        recorded.update((n, raw[n]) for n in _core.STEP_COUNTERS)
        if index < len(step_names):  # the result queue has no workers
            recorded.update((n, raw[n]) for n in _core.STEP_GAUGES)
        steps.append(StepMetrics(name=name, queue_size=queue_size, **recorded))
    memory: dict[str, int] = {}
    if collector.is_collectible(MetricsTypes.MEMORY_USAGE):
        memory = {label: rss_bytes(pid) for label, pid in processes(workers)}
    return FlowMetrics(steps=steps, tasks=task_counts, memory=memory)


async def export_periodically(read: Callable[[], FlowMetrics | None], exporter: Exporter) -> None:
    """Every ``export_period`` seconds, hands the exporter what changed
    since the last time (the first time: everything so far), until ``read``
    returns None (the flow stopped)."""
    last = read()
    if last is not None:
        last = last.zero()
    while last is not None:
        await asyncio.sleep(exporter.export_period)
        now = read()
        if now is None:
            return
        try:
            exporter.export(now - last)
        except Exception:
            log.exception("metrics exporter failed")
        last = now
