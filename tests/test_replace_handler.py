"""``Flow.replace_handler``: a step's handler swapped while callers keep
calling — every call answered, answers moving from the old version to the
new; a new handler that cannot start leaves the old one serving."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from aqueduct import FlowStep
from aqueduct.exceptions import (
    FlowError,
    FlowStartTimeoutError,
    NotRunningError,
    WorkerStartError,
)
from generators import Counter, Prompt
from support import eventually_async
from versioned import Asked, Versioned

#: Bound on one replacement in these tests (new interpreters start on a slow VM).
SWAP_TIMEOUT = 30.0


async def _versions(flow, n: int = 8) -> set[str | None]:
    tasks = [Asked() for _ in range(n)]
    await asyncio.gather(*(flow.process(t, timeout_sec=10) for t in tasks))
    return {t.version for t in tasks}


async def test_32_callers_through_a_swap_are_all_answered_and_move_to_the_new_version(
    make_flow,
):
    step = FlowStep(Versioned("old"), nprocs=2)
    flow = make_flow(step)
    answers: list[tuple[float, str | None]] = []
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            task = Asked()
            try:
                await flow.process(task, timeout_sec=10)
            except Exception as exc:  # counted: the test wants none
                failures.append(exc)
            answers.append((time.monotonic(), task.version))

    callers = [asyncio.create_task(caller()) for _ in range(32)]
    await eventually_async(lambda: len(answers) > 200, what="answers before the swap")
    before = len(answers)
    await asyncio.wait_for(
        flow.replace_handler(step, Versioned("new", start_delay=0.3)), timeout=SWAP_TIMEOUT
    )
    swapped_at = time.monotonic()
    await eventually_async(
        lambda: sum(1 for t, _ in answers if t > swapped_at) > 200, what="answers after"
    )
    stop.set()
    await asyncio.wait_for(asyncio.gather(*callers), timeout=20)
    assert failures == []
    assert {v for _, v in answers[:before]} == {"old"}
    assert {v for t, v in answers if t > swapped_at} == {"new"}
    assert await _versions(flow) == {"new"}


async def test_a_new_handler_that_fails_to_start_leaves_the_old_one_serving(make_flow):
    step = FlowStep(Versioned("old"), nprocs=2)
    flow = make_flow(step)
    with pytest.raises(WorkerStartError, match="cannot start worker 1"):
        await asyncio.wait_for(
            flow.replace_handler(step, Versioned("new", fail_workers=(1,))),
            timeout=SWAP_TIMEOUT,
        )
    assert await _versions(flow) == {"old"}
    assert flow.metrics().steps[0].workers_running == 2
    # and a good one after it goes in
    await asyncio.wait_for(flow.replace_handler(0, Versioned("new")), timeout=SWAP_TIMEOUT)
    assert await _versions(flow) == {"new"}


async def test_a_new_handler_too_slow_to_start_times_out_and_the_old_one_serves(make_flow):
    step = FlowStep(Versioned("old"))
    flow = make_flow(step)
    slow = Versioned("new", start_delay=30)
    started = time.monotonic()
    with pytest.raises(FlowStartTimeoutError):
        await flow.replace_handler(step.handler.get_step_name(1), slow, start_timeout=1.0)
    assert time.monotonic() - started < 10, "the slow workers are not waited for"
    assert await _versions(flow) == {"old"}


async def test_stopping_the_flow_ends_a_replacement_under_way(make_flow):
    step = FlowStep(Versioned("old"))
    flow = make_flow(step)
    swap = asyncio.create_task(flow.replace_handler(step, Versioned("new", start_delay=20)))
    await asyncio.sleep(0.5)  # its workers are starting
    await asyncio.wait_for(flow.stop(), timeout=15)
    with pytest.raises(FlowError, match="stopped"):
        await asyncio.wait_for(swap, timeout=5)


async def test_a_respawned_worker_runs_the_handler_it_was_replaced_with(make_flow):
    step = FlowStep(Versioned("old"), nprocs=1)
    flow = make_flow(step)
    await asyncio.wait_for(flow.replace_handler(step, Versioned("new")), timeout=SWAP_TIMEOUT)
    task = Asked()
    await flow.process(task, timeout_sec=10)
    os.kill(task.pid, signal.SIGKILL)

    async def respawned() -> bool:
        again = Asked()
        try:
            await flow.process(again, timeout_sec=10)
        except Exception:
            return False
        return again.pid != task.pid and again.version == "new"

    await eventually_async(respawned, what="an answer from the respawned worker")


async def test_a_stream_under_way_finishes_on_the_old_handler(make_flow):
    step = FlowStep(Counter(delay=0.05, prefix="old-"))
    flow = make_flow(step)

    async def read() -> list[str]:
        return [part async for part in flow.stream(Prompt("s", 20), timeout_sec=20)]

    streaming = asyncio.create_task(read())
    await asyncio.sleep(0.3)  # it started
    await asyncio.wait_for(flow.replace_handler(step, Counter(prefix="new-")), timeout=SWAP_TIMEOUT)
    parts = await asyncio.wait_for(streaming, timeout=20)
    assert parts == [f"old-s:{i}" for i in range(20)]
    after = [part async for part in flow.stream(Prompt("t", 2), timeout_sec=10)]
    assert after == ["new-t:0", "new-t:1"]


async def test_a_flow_not_running_has_no_handler_to_replace(make_flow):
    step = FlowStep(Versioned("old"))
    flow = make_flow(step, start=False)
    with pytest.raises(NotRunningError):
        await flow.replace_handler(step, Versioned("new"))


async def test_a_step_is_named_by_its_object_name_or_index(make_flow):
    flow = make_flow(FlowStep(Versioned("a")), FlowStep(Versioned("b")))
    with pytest.raises(ValueError, match="no step"):
        await flow.replace_handler("step9_Nothing", Versioned("c"))
    with pytest.raises(ValueError, match="no step"):
        await flow.replace_handler(FlowStep(Versioned("c")), Versioned("c"))
    with pytest.raises(TypeError):
        await flow.replace_handler(1, object())  # type: ignore[arg-type]
    await asyncio.wait_for(flow.replace_handler(1, Versioned("c")), timeout=SWAP_TIMEOUT)
    assert await _versions(flow) == {"c"}
