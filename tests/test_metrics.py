"""Metrics recorded where events happen, exported to StatsD and Prometheus."""

from __future__ import annotations

import asyncio

import pytest
from aqueduct import FlowStep
from aqueduct.exceptions import TaskTimeoutError
from aqueduct.metrics import MAIN_PROCESS, ToStatsDMetricsExporter
from support import Gate, Recorder, Square, Task, eventually_async

WAIT = 20


class StatsDBuffer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []

    def count(self, name: str, value: float) -> None:
        self.calls.append(("count", name, value))

    def timing(self, name: str, value: float) -> None:
        self.calls.append(("timing", name, value))

    def gauge(self, name: str, value: float) -> None:
        self.calls.append(("gauge", name, value))


async def test_each_step_records_handle_batch_and_queue_metrics(make_flow):
    flow = make_flow(FlowStep(Recorder("a"), batch_size=4), FlowStep(Square()))
    tasks = [Task(i, sleep=0.01) for i in range(20)]
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
    snapshot = flow.metrics()
    assert [s.name for s in snapshot.steps] == ["step1_Recorder", "step2_Square", MAIN_PROCESS]
    first, second, results = snapshot.steps
    assert first.handled == 20 and second.handled == 20
    assert first.batch_size.sum == 20 and first.batch_size.count >= 5  # batches of <= 4
    assert first.handle_us.count == first.batch_size.count
    assert first.handle_us.mean >= 10_000  # each batch slept 10 ms
    assert first.transfer_us.count == 20 and results.transfer_us.count == 20
    assert snapshot.tasks["done"] == 20
    assert snapshot.memory[MAIN_PROCESS] > 0 and snapshot.memory["step1_Recorder"] > 0


async def test_dropped_tasks_are_counted_per_step(make_flow, tmp_path):
    flow = make_flow(FlowStep(Recorder("a")))
    gate = Gate(tmp_path)
    blocker = asyncio.ensure_future(flow.process(Task(0).gated(gate), timeout_sec=WAIT))
    await gate.reached()
    with pytest.raises(TaskTimeoutError):
        await asyncio.wait_for(flow.process(Task(1), timeout_sec=0.1), WAIT)
    cancelled = asyncio.ensure_future(flow.process(Task(2), timeout_sec=WAIT))
    await asyncio.sleep(0)  # queued behind the blocker
    cancelled.cancel()
    gate.open()
    await asyncio.wait_for(blocker, WAIT)
    await asyncio.wait_for(flow.process(Task(3)), WAIT)
    step = flow.metrics().steps[0]
    assert (step.expired, step.cancelled) == (1, 1)
    assert flow.task_counts == {"done": 2, "failed": 0, "timeout": 1, "cancelled": 1}


async def test_statsd_exporter_uses_upstream_names(make_flow):
    buffer = StatsDBuffer()
    exporter = ToStatsDMetricsExporter(buffer, export_period=0.1, prefix="svc")
    flow = make_flow(FlowStep(Square(), batch_size=2), metrics_exporter=exporter)
    await asyncio.wait_for(asyncio.gather(*(flow.process(Task(i)) for i in range(10))), WAIT)
    await eventually_async(lambda: any(n == "aqueduct.svc.tasks.done" for _, n, _ in buffer.calls))
    names = {name for _, name, _ in buffer.calls}
    for expected in (
        "aqueduct.svc.handle_time.step1_Square",
        "aqueduct.svc.batch_time.step1_Square",
        "aqueduct.svc.batch_size.step1_Square",
        "aqueduct.svc.transfer_time.step1_Square",
        "aqueduct.svc.qsize.step1_Square",
        "aqueduct.svc.memory_usage.main_process",
    ):
        assert expected in names, expected
    done = sum(v for kind, n, v in buffer.calls if n == "aqueduct.svc.tasks.done")
    assert done == 10  # counts are deltas: summed over exports they add up


async def test_prometheus_collector_exposes_steps_as_labels(make_flow):
    prometheus_client = pytest.importorskip("prometheus_client")
    from aqueduct.metrics.prometheus import register

    flow = make_flow(FlowStep(Square()))
    registry = prometheus_client.CollectorRegistry()
    register(flow, flow_name="squares", registry=registry)
    await asyncio.wait_for(asyncio.gather(*(flow.process(Task(i)) for i in range(5))), WAIT)
    text = prometheus_client.generate_latest(registry).decode()
    assert 'aqueduct_handle_seconds_count{flow="squares",step="step1_Square"}' in text
    assert 'aqueduct_tasks_total{flow="squares",outcome="done"} 5.0' in text
    assert 'aqueduct_queue_size{flow="squares",step="step1_Square"}' in text
    assert 'aqueduct_memory_bytes{flow="squares",process="main_process"}' in text


async def test_metrics_can_be_turned_off(make_flow):
    flow = make_flow(FlowStep(Square()), metrics_enabled=False)
    await asyncio.wait_for(flow.process(Task(2)), WAIT)
    assert flow.metrics() is None


def test_a_steps_metrics_are_the_fields_the_core_records():
    from dataclasses import fields

    from aqueduct import _core
    from aqueduct.metrics import StepMetrics

    recorded = [f.name for f in fields(StepMetrics) if f.name not in ("name", "queue_size")]
    assert recorded == [*_core.STEP_HISTOGRAMS, *_core.STEP_COUNTERS, *_core.STEP_GAUGES]
