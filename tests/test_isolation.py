"""What a worker's native code scribbling over shared memory can and cannot
do to the web process and to later flows. Every wait is bounded."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aqueduct import FlowStep
from aqueduct.exceptions import FlowError
from support import ArrayTask, Doubler, Scribbler, Task

WAIT = 20


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_flow_started_after_a_scribbled_one_gets_fresh_segments(make_flow, seed):
    broken = make_flow(FlowStep(Scribbler()))
    warm = ArrayTask(np.arange(100_000, dtype=np.int64))  # blocks in the arenas
    await asyncio.wait_for(broken.process(warm, timeout_sec=WAIT), WAIT)
    try:
        await asyncio.wait_for(broken.process(Task(-13, sleep=seed), timeout_sec=2), WAIT)
    except FlowError:
        pass  # whatever the scribbled segments made of the answer, it is an error or a result
    await asyncio.wait_for(broken.stop(graceful=False), WAIT)

    fresh = make_flow(FlowStep(Doubler()))
    array = np.arange(1_000_000, dtype=np.int64)  # 8 MB: through the arenas
    task = ArrayTask(array)
    await asyncio.wait_for(fresh.process(task, timeout_sec=WAIT), WAIT)
    assert (task.out == array * 2).all()
    small = ArrayTask(np.array([3]))
    await asyncio.wait_for(fresh.process(small, timeout_sec=WAIT), WAIT)
    assert list(small.out) == [6]
