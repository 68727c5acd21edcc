"""Bad days: workers that die, callers that give up, overload, bad input.
Every fault is injected for real and every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from aqueduct import FlowState, FlowStep
from aqueduct.exceptions import (
    FlowError,
    HandlerError,
    QueueFullError,
    WorkerDiedError,
    WorkerStartError,
)
from aqueduct.testing import abandon_push, fault_injection_available
from support import (
    DiesOnStart,
    Gate,
    Mortal,
    Raises,
    Recorder,
    Square,
    Task,
    children_of,
    eventually_async,
    running,
)

WAIT = 20


def _starts(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


async def test_a_killed_worker_fails_its_tasks_fast_and_is_respawned(make_flow, tmp_path):
    starts = tmp_path / "starts"
    flow = make_flow(FlowStep(Mortal(str(starts)), batch_size=4))
    first_pid = _starts(starts)[0]
    gate = Gate(tmp_path)
    blocker = asyncio.ensure_future(flow.process(Task(0).gated(gate), timeout_sec=WAIT))
    await gate.reached()
    # queued together behind the blocker, these form one batch; the worker
    # dies while handling it, and every task of it fails
    death = Gate(tmp_path)
    doomed = [Task(-9).gated(death), Task(1), Task(2)]
    runs = asyncio.gather(
        *(flow.process(t, timeout_sec=WAIT) for t in doomed), return_exceptions=True
    )
    await asyncio.sleep(0)
    gate.open()
    await death.reached()
    death.open()  # the worker kills itself now
    started = time.monotonic()
    results = await asyncio.wait_for(runs, WAIT)
    # the callers hear of the death well within a second
    assert time.monotonic() - started < 1.0
    assert all(isinstance(r, WorkerDiedError) for r in results), results
    assert "step1_Mortal" in str(results[0]) and "SIGKILL" in str(results[0])
    await asyncio.wait_for(blocker, WAIT)
    # on_start ran again in a new process, and the flow serves
    await eventually_async(lambda: len(_starts(starts)) == 2)
    assert _starts(starts)[1] != first_pid
    task = Task(5)
    await asyncio.wait_for(flow.process(task, timeout_sec=WAIT), WAIT)
    assert task.result == 5 and task.pid == _starts(starts)[1]
    assert flow.is_running


async def test_tasks_queued_behind_a_dead_worker_are_served_by_its_successor(make_flow, tmp_path):
    flow = make_flow(FlowStep(Mortal(str(tmp_path / "starts"))))
    death = Gate(tmp_path)
    doomed = asyncio.ensure_future(flow.process(Task(-9).gated(death), timeout_sec=WAIT))
    await death.reached()
    waiting = [Task(i) for i in range(10)]  # still in the queue when it dies
    runs = asyncio.gather(*(flow.process(t, timeout_sec=WAIT) for t in waiting))
    await asyncio.sleep(0)
    death.open()
    results = await asyncio.wait_for(runs, WAIT)
    assert results == [True] * 10 and [t.result for t in waiting] == list(range(10))
    with pytest.raises(WorkerDiedError):
        await asyncio.wait_for(doomed, WAIT)


async def test_a_respawn_storm_is_stopped_and_reported(make_flow, tmp_path):
    starts = tmp_path / "starts"
    flow = make_flow(FlowStep(Mortal(str(starts))))
    started = time.monotonic()
    for _ in range(12):  # every task kills the worker
        with pytest.raises(FlowError):
            await asyncio.wait_for(flow.process(Task(-1), timeout_sec=5), WAIT)
        if "is down" in str(await _last_error(flow)):
            break
    with pytest.raises(FlowError, match="is down"):
        await flow.process(Task(1))
    assert len(_starts(starts)) <= 6  # the first start and at most 5 respawns
    assert time.monotonic() - started < 30


async def _last_error(flow) -> BaseException | None:
    try:
        await asyncio.wait_for(flow.process(Task(0), timeout_sec=5), WAIT)
    except FlowError as exc:
        return exc
    return None


async def test_a_worker_dying_in_on_start_fails_start(make_flow):
    flow = make_flow(FlowStep(DiesOnStart()), start=False)
    with pytest.raises(WorkerStartError, match="exit code 7"):
        flow.start(timeout=WAIT)
    assert flow.state == FlowState.STOPPED


async def test_a_cancelled_caller_s_task_is_skipped_by_the_worker(make_flow, tmp_path):
    flow = make_flow(FlowStep(Recorder("r")))
    gate = Gate(tmp_path)
    blocker = asyncio.ensure_future(flow.process(Task(0).gated(gate), timeout_sec=WAIT))
    await gate.reached()
    cancelled = asyncio.ensure_future(flow.process(Task(1), timeout_sec=WAIT))
    await asyncio.sleep(0)  # queued behind the blocker
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    gate.open()
    await asyncio.wait_for(blocker, WAIT)
    probe = Task(2)
    await asyncio.wait_for(flow.process(probe), WAIT)
    assert probe.order == 2  # handled: the blocker, then the probe; never the cancelled one


async def test_reject_policy_fails_fast_with_queue_full(make_flow, tmp_path):
    flow = make_flow(FlowStep(Recorder("r")), queue_size=2, queue_full="reject")
    gate = Gate(tmp_path)
    blocker = asyncio.ensure_future(flow.process(Task(0).gated(gate), timeout_sec=WAIT))
    await gate.reached()  # the worker is busy with it
    busy = [blocker] + [
        asyncio.ensure_future(flow.process(Task(i, sleep=0.01), timeout_sec=WAIT))
        for i in range(1, 3)  # these two fill the queue
    ]
    await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(QueueFullError):
        await flow.process(Task(9), timeout_sec=WAIT)
    assert time.monotonic() - started < 0.1
    gate.open()
    await asyncio.wait_for(asyncio.gather(*busy), WAIT)
    task = Task(4)
    await asyncio.wait_for(flow.process(task), WAIT)  # serving again
    assert task.trail == ["r"]


async def test_overload_of_1024_callers_completes(make_flow):
    flow = make_flow(FlowStep(Square()), FlowStep(Square()), queue_size=64)
    done = 0

    async def caller(n: int) -> None:
        nonlocal done
        for i in range(n):
            task = Task(i)
            await flow.process(task, timeout_sec=60)
            assert task.result == i * i
            done += 1

    await asyncio.wait_for(asyncio.gather(*(caller(5) for _ in range(1024))), 60)
    assert done == 5120


@pytest.mark.parametrize(
    ("value", "exc_type"),
    [(1, "SystemExit"), (2, "KeyboardInterrupt"), (3, "UnprintableError")],
)
async def test_whatever_a_handler_raises_fails_its_batch_only(make_flow, value, exc_type):
    flow = make_flow(FlowStep(Raises()))
    with pytest.raises(HandlerError) as info:
        await asyncio.wait_for(flow.process(Task(value)), WAIT)
    assert info.value.exc_type == exc_type
    task = Task(7)  # a handler's return value is ignored
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == 7


@pytest.mark.parametrize("graceful", [True, False])
async def test_stop_leaves_no_process_behind(make_flow, graceful):
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # multiprocessing's own helper process stays
    before = children_of(os.getpid())
    flow = make_flow(FlowStep(Square(), nprocs=2), FlowStep(Recorder("r")))
    runs = [flow.process(Task(i, sleep=0.05), timeout_sec=WAIT) for i in range(10)]
    pending = asyncio.gather(*runs, return_exceptions=True)
    await asyncio.sleep(0)  # every task submitted
    await asyncio.wait_for(flow.stop(graceful=graceful), WAIT)
    results = await asyncio.wait_for(pending, WAIT)
    if graceful:
        assert results == [True] * 10
    else:
        assert all(r is True or isinstance(r, FlowError) for r in results)
    await eventually_async(lambda: children_of(os.getpid()) <= before, within=5)


PARENT = textwrap.dedent(
    """
    import asyncio, os, sys
    sys.path.insert(0, {tests!r})
    from support import Square
    from aqueduct import Flow, FlowStep

    async def main():
        flow = Flow(FlowStep(Square(), nprocs=2), FlowStep(Square()))
        flow.start(timeout=30)
        from support import children_of

        print(" ".join(str(pid) for pid in children_of(os.getpid())), flush=True)
        await asyncio.sleep(60)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


def test_workers_exit_within_two_seconds_of_their_parent_s_death(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(tests=str(Path(__file__).parent)))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(workers) == 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        killed = time.monotonic()
        while any(running(pid) for pid in workers):
            assert time.monotonic() - killed < 2.0, "a worker outlived its parent by 2 s"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_task_counts_tell_how_tasks_ended(make_flow):
    flow = make_flow(FlowStep(Raises()), FlowStep(Recorder("r")))
    await asyncio.wait_for(flow.process(Task(5)), WAIT)
    with pytest.raises(HandlerError):
        await asyncio.wait_for(flow.process(Task(1)), WAIT)
    slow = Task(6, sleep=0.5)
    slow.trail = []
    with pytest.raises(FlowError):
        await asyncio.wait_for(flow.process(slow, timeout_sec=0.01), WAIT)
    cancelled = asyncio.ensure_future(flow.process(Task(7), timeout_sec=WAIT))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert flow.task_counts == {"done": 1, "failed": 1, "timeout": 1, "cancelled": 1}


async def test_tasks_taken_together_still_expire_before_handle(make_flow, tmp_path):
    flow = make_flow(FlowStep(Recorder("r")))  # one worker: it takes what is queued at once
    gate = Gate(tmp_path)
    blocker = asyncio.ensure_future(flow.process(Task(0).gated(gate), timeout_sec=WAIT))
    await gate.reached()
    # the short one's time runs out while the slow one is handled
    slow = asyncio.ensure_future(flow.process(Task(1, sleep=0.8), timeout_sec=WAIT))
    short = asyncio.ensure_future(flow.process(Task(2), timeout_sec=0.5))
    await asyncio.sleep(0)  # both queued behind the blocker
    gate.open()
    await asyncio.wait_for(asyncio.gather(blocker, slow), WAIT)
    with pytest.raises(FlowError):
        await asyncio.wait_for(short, WAIT)
    probe = Task(3)
    await asyncio.wait_for(flow.process(probe), WAIT)
    assert probe.order == 3  # the blocker, the slow one, the probe: never the expired one


@pytest.mark.skipif(
    not fault_injection_available(), reason="built without fault-injection (make build has it)"
)
async def test_a_queue_left_mid_push_by_a_dead_worker_is_unblocked(make_flow, tmp_path):
    flow = make_flow(FlowStep(Mortal(str(tmp_path / "starts"))))
    with pytest.raises(WorkerDiedError):
        await asyncio.wait_for(flow.process(Task(-9), timeout_sec=WAIT), WAIT)
    # fault injection: what a producer killed between claiming room in the
    # queue and publishing its message leaves behind
    abandon_push(flow, step=0, payload_len=100)
    task = Task(4)
    started = time.monotonic()
    await asyncio.wait_for(flow.process(task, timeout_sec=WAIT), WAIT)
    assert task.result == 4
    assert time.monotonic() - started < 3  # unblocked within a few monitor ticks
