"""Elastic steps (``FlowStep(nprocs=(min, max))``): workers added while
tasks wait, removed after the idle period, never more busy on cores than
there are cores unless asked; their state in the metrics."""

from __future__ import annotations

import asyncio
import os

import pytest
from aqueduct import Elastic, FlowStep
from aqueduct.metrics.prometheus import FlowCollector
from support import eventually_async
from versioned import Asked, Versioned

CORES = len(os.sched_getaffinity(0))


def _workers(flow) -> tuple[int, int, int]:
    step = flow.metrics().steps[0]
    return step.workers_running, step.workers_starting, step.workers_retiring


class _Load:
    """``n`` callers calling until stopped; what they got and every error."""

    def __init__(self, flow, n: int) -> None:
        self.flow, self.answers, self.errors = flow, [], []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._call()) for _ in range(n)]

    async def _call(self) -> None:
        while not self._stop.is_set():
            task = Asked()
            try:
                await self.flow.process(task, timeout_sec=10)
                self.answers.append(task)
            except Exception as exc:
                self.errors.append(exc)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout=20)


async def test_a_step_grows_while_tasks_wait_and_shrinks_back_after_the_idle_period(
    make_flow,
):
    elastic = Elastic(1, 3, grow_after=0.05, shrink_after=1.0)
    flow = make_flow(FlowStep(Versioned("v", work=0.02), nprocs=elastic))
    assert _workers(flow) == (1, 0, 0)
    load = _Load(flow, 24)
    await eventually_async(lambda: _workers(flow)[0] == 3, what=lambda: _workers(flow))
    await eventually_async(lambda: {t.worker for t in load.answers[-30:]} == {0, 1, 2})
    await load.stop()
    assert load.errors == []
    await eventually_async(lambda: _workers(flow) == (1, 0, 0), what=lambda: _workers(flow))
    task = Asked()
    assert await flow.process(task, timeout_sec=10)
    assert task.worker == 0, "the lowest numbers stay"


async def test_the_workers_state_is_in_the_prometheus_metrics(make_flow):
    flow = make_flow(FlowStep(Versioned("v"), nprocs=(2, 4)))
    families = {f.name: f for f in FlowCollector(flow, "f").collect()}
    samples = {s.labels["state"]: s.value for s in families["aqueduct_workers"].samples}
    assert samples == {"running": 2, "starting": 0, "retiring": 0}


@pytest.mark.skipif(CORES > 4, reason="needs a machine with fewer cores than the step's max")
async def test_a_step_busy_on_every_core_grows_no_further(make_flow):
    flow = make_flow(FlowStep(Versioned("v", work=0.03, spin=True), nprocs=(1, 6)))
    load = _Load(flow, 24)
    seen = []
    for _ in range(40):  # 2 s: many chances to grow
        await asyncio.sleep(0.05)
        running, starting, _ = _workers(flow)
        seen.append(running + starting)
    await load.stop()
    assert load.errors == []
    assert max(seen) <= CORES, seen


async def test_with_oversubscribe_it_grows_past_the_cores(make_flow):
    elastic = Elastic(1, CORES + 2, grow_after=0.02, oversubscribe=True)
    flow = make_flow(FlowStep(Versioned("v", work=0.03, spin=True), nprocs=elastic))
    load = _Load(flow, 32)
    await eventually_async(lambda: _workers(flow)[0] == CORES + 2, what=lambda: _workers(flow))
    await load.stop()
    assert load.errors == []


async def test_workers_that_fail_to_start_do_not_stop_the_step_serving(make_flow):
    handler = Versioned("v", work=0.02, fail_workers=(1, 2))
    flow = make_flow(FlowStep(handler, nprocs=Elastic(1, 3, grow_after=0.02)))
    load = _Load(flow, 16)
    await asyncio.sleep(2.0)
    await load.stop()
    assert load.errors == []
    assert len(load.answers) > 50
    assert _workers(flow)[0] == 1


def test_elastic_bounds_are_checked():
    for bad in [(0, 2), (3, 2)]:
        with pytest.raises(ValueError):
            FlowStep(Versioned("v"), nprocs=bad)
    with pytest.raises(ValueError):
        Elastic(1, 2, shrink_after=0)
    step = FlowStep(Versioned("v"), nprocs=(1, 4))
    assert (step.nprocs, step.max_nprocs) == (1, 4)
    assert "nprocs=(1, 4)" in repr(step)


async def test_a_grown_step_keeps_its_size_through_a_handler_replacement(make_flow):
    elastic = Elastic(1, 3, grow_after=0.02, shrink_after=30)
    flow = make_flow(FlowStep(Versioned("old", work=0.02), nprocs=elastic))
    load = _Load(flow, 24)
    await eventually_async(lambda: _workers(flow)[0] == 3, what=lambda: _workers(flow))
    await asyncio.wait_for(flow.replace_handler(0, Versioned("new", work=0.02)), timeout=30)
    mark = len(load.answers)
    await eventually_async(lambda: len(load.answers) > mark + 60, what="answers after")
    await load.stop()
    assert load.errors == []
    assert {t.version for t in load.answers[mark:]} == {"new"}
    assert {t.worker for t in load.answers[-30:]} == {0, 1, 2}
    assert _workers(flow)[0] == 3
