"""The core contract of Flow / FlowStep, through public names only."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

import pytest
import support
from aqueduct import BaseTask, Flow, FlowState, FlowStep
from aqueduct.exceptions import (
    AqueductError,
    FlowError,
    FlowStartTimeoutError,
    HandlerError,
    MPStartMethodValueError,
    NotRunningError,
    SharedMemoryFullError,
    TaskSerializationError,
    TaskTimeoutError,
    WorkerStartError,
)
from aqueduct.logger import log
from support import (
    FailingStart,
    FailOn,
    Gate,
    Logs,
    Recorder,
    SetsUnpicklable,
    SlowStart,
    Square,
    Task,
    eventually_async,
    is_even,
)

WAIT = 20  # bound on any single await in these tests


async def test_process_updates_the_callers_task_in_place(make_flow):
    flow = make_flow(FlowStep(Square()))
    task = Task(7)
    task_id = task.task_id
    assert await asyncio.wait_for(flow.process(task), WAIT) is True
    assert task.result == 49
    assert task.pid != os.getpid()
    assert task.task_id == task_id


async def test_a_bare_handler_is_a_one_process_step(make_flow):
    flow = make_flow(Square())
    task = Task(3)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == 9


async def test_steps_run_in_order_each_seeing_the_previous_results(make_flow):
    flow = make_flow(FlowStep(Recorder("a")), FlowStep(Recorder("b")), FlowStep(Recorder("c")))
    tasks = [Task(i) for i in range(50)]
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
    assert all(t.trail == ["a", "b", "c"] for t in tasks)


async def test_nprocs_runs_a_step_in_several_processes(make_flow):
    flow = make_flow(FlowStep(Recorder("a"), nprocs=3))
    tasks = [Task(i, sleep=0.05) for i in range(30)]
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
    assert len({t.pid for t in tasks}) == 3


async def test_start_waits_for_every_on_start(make_flow):
    started = time.monotonic()
    flow = make_flow(FlowStep(SlowStart(0.5), nprocs=2))
    assert time.monotonic() - started >= 0.5
    assert flow.is_running and flow.state == FlowState.RUNNING
    task = Task()
    await asyncio.wait_for(flow.process(task), WAIT)
    assert str(task.result).startswith("loaded in ")


async def test_start_timeout_fails_with_flow_error_and_leaves_no_process(make_flow):
    flow = make_flow(FlowStep(SlowStart(10)), start=False)
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # multiprocessing's own helper process stays
    before = support.children_of(os.getpid())
    started = time.monotonic()
    with pytest.raises(FlowStartTimeoutError) as info:
        flow.start(timeout=0.5)
    assert isinstance(info.value, FlowError)
    assert time.monotonic() - started < 5
    assert flow.state == FlowState.STOPPED
    assert support.children_of(os.getpid()) <= before


async def test_on_start_failure_fails_start_with_the_child_traceback(make_flow):
    flow = make_flow(FlowStep(FailingStart()), start=False)
    with pytest.raises(WorkerStartError) as info:
        flow.start(timeout=WAIT)
    assert "model file is missing" in str(info.value)
    assert "RuntimeError" in str(info.value)
    assert flow.state == FlowState.STOPPED


async def test_init_processes_then_start_inited(make_flow):
    flow = make_flow(FlowStep(Square()), start=False)
    flow.init_processes(timeout=WAIT)
    assert flow.state == FlowState.STEPS_INITIALIZED
    assert flow.are_steps_initialized and not flow.is_running
    with pytest.raises(NotRunningError):
        await flow.process(Task(1))
    flow.start_inited()
    assert flow.is_running
    task = Task(4)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == 16


async def test_state_lifecycle_and_not_running_errors(make_flow):
    flow = make_flow(FlowStep(Square()), start=False)
    assert flow.state == FlowState.STOPPED and not flow.is_running
    with pytest.raises(NotRunningError):
        await flow.process(Task(1))
    flow.start(timeout=WAIT)
    flow.start(timeout=WAIT)  # starting a running flow is a no-op
    assert flow.state == FlowState.RUNNING
    await asyncio.wait_for(flow.stop(), WAIT)
    assert flow.state == FlowState.STOPPED
    await asyncio.wait_for(flow.stop(), WAIT)  # stopping twice is a no-op
    with pytest.raises(NotRunningError) as info:
        await flow.process(Task(1))
    assert isinstance(info.value, FlowError)


async def test_handle_condition_skips_a_step(make_flow):
    flow = make_flow(
        FlowStep(Recorder("evens"), handle_condition=is_even),
        FlowStep(Recorder("big"), handle_condition=lambda task: task.value >= 5),
        FlowStep(Recorder("all")),
    )
    tasks = [Task(i) for i in range(8)]
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
    for t in tasks:
        expected = (["evens"] if t.value % 2 == 0 else []) + (["big"] if t.value >= 5 else [])
        assert t.trail == [*expected, "all"], t.value


async def test_a_task_no_step_wants_comes_back_untouched(make_flow):
    flow = make_flow(FlowStep(Recorder("never"), handle_condition=lambda task: False))
    task = Task(1)
    assert await asyncio.wait_for(flow.process(task), WAIT) is True
    assert task.trail == []


async def test_batches_never_exceed_batch_size(make_flow):
    flow = make_flow(FlowStep(Recorder("b"), batch_size=4))
    tasks = [Task(i, sleep=0.02) for i in range(40)]
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
    sizes = [t.batch_size for t in tasks]
    assert max(sizes) == 4  # tasks queue up behind the sleeping handler
    assert all(1 <= s <= 4 for s in sizes)


async def test_without_batch_timeout_a_lone_task_is_not_held_back(make_flow):
    flow = make_flow(FlowStep(Recorder("b"), batch_size=32))
    await asyncio.wait_for(flow.process(Task(0)), WAIT)  # warm up
    started = time.monotonic()
    task = Task(1)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.batch_size == 1
    assert time.monotonic() - started < 0.2


async def test_batch_timeout_collects_late_tasks_into_one_batch(make_flow):
    flow = make_flow(FlowStep(Recorder("b"), batch_size=8, batch_timeout=0.5))

    async def late(delay: float, task: Task) -> None:
        await asyncio.sleep(delay)
        await flow.process(task)

    tasks = [Task(i) for i in range(3)]
    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(late(0.05 * i, t) for i, t in enumerate(tasks))), WAIT)
    assert [t.batch_size for t in tasks] == [3, 3, 3]
    assert time.monotonic() - started >= 0.45


async def test_a_full_batch_does_not_wait_for_batch_timeout(make_flow):
    flow = make_flow(FlowStep(Recorder("b"), batch_size=4, batch_timeout=5))
    tasks = [Task(i) for i in range(4)]
    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
    assert time.monotonic() - started < 2
    assert {t.batch_size for t in tasks} == {4}


async def test_higher_priority_is_served_first_at_every_step(make_flow, tmp_path):
    flow = make_flow(
        FlowStep(Recorder("one"), batch_size=1),
        FlowStep(Recorder("two"), batch_size=1),
        queue_priorities=2,
    )
    gate = Gate(tmp_path)
    blocker = Task(0).gated(gate)  # occupies step one while the others queue up
    blocker_run = asyncio.ensure_future(flow.process(blocker, timeout_sec=WAIT))
    await gate.reached()
    low = [Task(i, sleep=0.01) for i in range(1, 6)]
    high = [Task(i, sleep=0.01) for i in range(6, 11)]
    for t in high:
        t.set_priority(1)
    runs = [asyncio.ensure_future(flow.process(t, timeout_sec=WAIT)) for t in low]
    runs += [asyncio.ensure_future(flow.process(t, timeout_sec=WAIT)) for t in high]
    await asyncio.sleep(0)  # every one submitted (low ones first) before the gate opens
    gate.open()
    await asyncio.wait_for(asyncio.gather(blocker_run, *runs), WAIT)
    assert max(t.order for t in high) < min(t.order for t in low)
    # in step two the high ones also arrive first: they left step one first
    assert all(t.trail == ["one", "two"] for t in low + high)


async def test_priority_above_the_levels_is_clamped(make_flow):
    flow = make_flow(FlowStep(Square()), queue_priorities=2)
    task = Task(2)
    task.set_priority(10)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == 4 and task.priority == 1


async def test_a_task_that_times_out_raises_and_is_not_handled(make_flow, tmp_path):
    flow = make_flow(FlowStep(Recorder("slow")))
    gate = Gate(tmp_path)
    blocker = asyncio.ensure_future(flow.process(Task(0).gated(gate), timeout_sec=WAIT))
    await gate.reached()
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError) as info:
        await asyncio.wait_for(flow.process(Task(1), timeout_sec=0.3), WAIT)
    assert isinstance(info.value, FlowError)
    assert 0.25 <= time.monotonic() - started < 1.0
    gate.open()
    await asyncio.wait_for(blocker, WAIT)
    probe = Task(2)
    await asyncio.wait_for(flow.process(probe), WAIT)
    # handled: the blocker (1), then the probe (2); the expired task was skipped
    assert probe.order == 2


async def test_a_handler_exception_fails_only_its_batch(make_flow):
    flow = make_flow(FlowStep(FailOn(bad=13), batch_size=1))
    with pytest.raises(HandlerError) as info:
        await asyncio.wait_for(flow.process(Task(13)), WAIT)
    err = info.value
    assert isinstance(err, FlowError) and isinstance(err, AqueductError)
    assert err.exc_type == "ValueError"
    assert err.exc_message == "cannot handle 13"
    assert "ValueError: cannot handle 13" in str(err)
    assert "step1_FailOn" in str(err)
    assert isinstance(err.__cause__, ValueError)
    assert "cannot handle 13" in err.worker_traceback
    ok = [Task(i) for i in range(5)]
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in ok)), WAIT)
    assert [t.result for t in ok] == list(range(5))


async def test_a_failing_batch_fails_every_task_in_it_and_no_other(make_flow, tmp_path):
    flow = make_flow(FlowStep(FailOn(bad=13), batch_size=4))
    gate = Gate(tmp_path)
    blocker = asyncio.ensure_future(flow.process(Task(0).gated(gate)))
    await gate.reached()
    batch = [Task(13), Task(1), Task(2)]  # queued together: one batch
    runs = asyncio.gather(*(flow.process(t) for t in batch), return_exceptions=True)
    await asyncio.sleep(0)  # all three queued behind the blocker
    gate.open()
    results = await asyncio.wait_for(runs, WAIT)
    assert all(isinstance(r, HandlerError) for r in results)
    await asyncio.wait_for(blocker, WAIT)
    task = Task(1)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == 1


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
async def test_every_start_method_works(make_flow, method):
    flow = make_flow(FlowStep(Square()), FlowStep(Recorder("r")), mp_start_method=method)
    task = Task(5)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == 25 and task.trail == ["r"]


def test_a_bad_start_method_is_refused():
    with pytest.raises(MPStartMethodValueError) as info:
        Flow(FlowStep(Square()), mp_start_method="thread")  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError) and isinstance(info.value, FlowError)


async def test_an_unpicklable_task_fails_alone(make_flow):
    import threading

    flow = make_flow(FlowStep(Square()))
    task = Task(1)
    task.lock = threading.Lock()  # type: ignore[attr-defined]
    with pytest.raises(TaskSerializationError):
        await asyncio.wait_for(flow.process(task), WAIT)
    ok = Task(3)
    await asyncio.wait_for(flow.process(ok), WAIT)
    assert ok.result == 9


async def test_a_handler_setting_an_unpicklable_field_fails_that_task(make_flow):
    flow = make_flow(FlowStep(SetsUnpicklable()))
    with pytest.raises(TaskSerializationError):
        await asyncio.wait_for(flow.process(Task(-1)), WAIT)
    ok = Task(2)
    await asyncio.wait_for(flow.process(ok), WAIT)
    assert ok.result == 2


async def test_a_task_bigger_than_a_queue_message_still_travels(make_flow):
    flow = make_flow(FlowStep(Recorder("r")), FlowStep(Recorder("s")))
    task = Task(1)
    # a str is pickled into the message itself; past the queue's limit the
    # whole pickle goes through shared memory instead
    task.blob = "x" * (16 << 20)  # type: ignore[attr-defined]
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.trail == ["r", "s"] and len(task.blob) == 16 << 20  # type: ignore[attr-defined]


async def test_a_task_bigger_than_shared_memory_names_its_size(make_flow):
    flow = make_flow(FlowStep(Square()), shm_size=1 << 20)
    task = Task(1)
    task.blob = "x" * (4 << 20)  # type: ignore[attr-defined]
    with pytest.raises(SharedMemoryFullError) as info:
        await asyncio.wait_for(flow.process(task), WAIT)
    size = int(re.search(r"a buffer of (\d+) bytes", str(info.value)).group(1))
    assert size > 4 << 20
    ok = Task(2)
    await asyncio.wait_for(flow.process(ok), WAIT)
    assert ok.result == 4


async def test_worker_log_records_reach_the_parent_logger(make_flow):
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    collector = Collect()
    log.addHandler(collector)
    try:
        flow = make_flow(FlowStep(Logs()))
        task = Task(42)
        await asyncio.wait_for(flow.process(task), WAIT)
        await eventually_async(
            lambda: any("handling task 42" in r.getMessage() for r in records),
            what=lambda: [r.getMessage() for r in records],
        )
    finally:
        log.removeHandler(collector)
    worker_records = [r for r in records if r.process == task.pid]
    assert any("on_start in worker" in r.getMessage() for r in worker_records)
    assert any(r.levelno == logging.WARNING for r in worker_records)


async def test_task_classes_that_workers_cannot_import_travel_by_value(make_flow):
    namespace: dict[str, object] = {"__name__": "not_importable_anywhere"}
    exec(
        "from aqueduct import BaseTask\n"
        "class Local(BaseTask):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.value = 6\n"
        "        self.result = None\n",
        namespace,
    )
    flow = make_flow(FlowStep(Square()), FlowStep(Recorder("r")))
    task = namespace["Local"]()
    task.trail, task.sleep = [], 0  # type: ignore[attr-defined]
    await asyncio.wait_for(flow.process(task), WAIT)  # type: ignore[arg-type]
    assert task.result == 36  # type: ignore[attr-defined]
    assert task.trail == ["r"]  # type: ignore[attr-defined]


async def test_graceful_stop_finishes_tasks_in_flight(make_flow, tmp_path):
    flow = make_flow(FlowStep(Recorder("r")))
    gate = Gate(tmp_path)
    tasks = [Task(0).gated(gate)] + [Task(i, sleep=0.05) for i in range(1, 5)]
    runs = asyncio.gather(*(flow.process(t, timeout_sec=WAIT) for t in tasks))
    await gate.reached()  # one task in the handler, four queued
    stopping = asyncio.ensure_future(flow.stop(graceful=True))
    await asyncio.sleep(0)
    assert flow.state == FlowState.STOPPING
    gate.open()
    await asyncio.wait_for(stopping, WAIT)
    assert await asyncio.wait_for(runs, WAIT) == [True] * 5
    assert flow.state == FlowState.STOPPED


async def test_hard_stop_fails_tasks_in_flight_at_once(make_flow, tmp_path):
    flow = make_flow(FlowStep(Recorder("r")))
    gate = Gate(tmp_path)  # never opened: the handler holds its task
    tasks = [Task(0).gated(gate), Task(1), Task(2)]
    runs = asyncio.gather(
        *(flow.process(t, timeout_sec=WAIT) for t in tasks), return_exceptions=True
    )
    await gate.reached()
    started = time.monotonic()
    await asyncio.wait_for(flow.stop(graceful=False), WAIT)
    results = await asyncio.wait_for(runs, WAIT)
    assert all(isinstance(r, FlowError) for r in results)
    assert time.monotonic() - started < 8


async def test_a_cancelled_caller_does_not_disturb_the_others(make_flow, tmp_path):
    flow = make_flow(FlowStep(Recorder("r")))
    gate = Gate(tmp_path)
    doomed = asyncio.ensure_future(flow.process(Task(1).gated(gate)))
    await gate.reached()
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    gate.open()
    task = Task(2)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.trail == ["r"]


async def test_update_copies_fields_but_keeps_identity():
    a, b = Task(1), Task(2)
    b.result = 99
    b.set_priority(3)
    a.update(b)
    assert a.result == 99 and a.value == 2
    assert a.task_id != b.task_id and a.priority == 0


def test_base_task_timeout_helpers():
    task = BaseTask()
    assert not task.is_expired()
    task.set_timeout(-1)
    assert task.is_expired()


async def test_a_running_flow_leaves_nothing_in_dev_shm(make_flow):
    before = set(os.listdir("/dev/shm"))
    flow = make_flow(FlowStep(Square()), FlowStep(Square(), nprocs=2), queue_priorities=3)
    await asyncio.wait_for(asyncio.gather(*(flow.process(Task(i)) for i in range(20))), WAIT)
    assert set(os.listdir("/dev/shm")) == before
    await asyncio.wait_for(flow.stop(), WAIT)
    assert set(os.listdir("/dev/shm")) == before


def test_replace_logger_routes_aqueduct_records():
    from aqueduct.logger import replace_logger

    saved = (log.name, log.level, log.parent, log.propagate, list(log.handlers), log.disabled)
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    mine = logging.getLogger("my-service")
    mine.setLevel(logging.INFO)
    mine.handlers = [Collect()]
    try:
        replace_logger(mine)
        log.info("hello")
        log.debug("dropped")
        assert [r.getMessage() for r in records] == ["hello"]
        assert log.name == "my-service"
    finally:
        log.name, log.level, log.parent, log.propagate, log.handlers, log.disabled = saved


async def test_on_start_wait_sleeps_after_starting_a_steps_processes(make_flow):
    started = time.monotonic()
    flow = make_flow(FlowStep(Square(), nprocs=2, on_start_wait=0.4))
    assert time.monotonic() - started >= 0.4
    task = Task(2)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == 4


async def test_a_duck_typed_handler_is_accepted(make_flow):
    flow = make_flow(FlowStep(support.DuckHandler()))
    task = Task(5)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == -5


def test_flowstep_validates_its_arguments():
    with pytest.raises(TypeError):
        FlowStep(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        FlowStep(Square(), batch_size=0)
    with pytest.raises(ValueError):
        FlowStep(Square(), nprocs=0)
    with pytest.raises(ValueError):
        FlowStep(Square(), batch_timeout=-1)


async def test_callers_meeting_a_full_queue_wait_for_room_in_arrival_order(make_flow):
    flow = make_flow(FlowStep(Recorder("r")), queue_size=2)
    tasks = [Task(i, sleep=0.005) for i in range(40)]
    await asyncio.wait_for(
        asyncio.gather(*(flow.process(t, timeout_sec=WAIT) for t in tasks)), WAIT
    )
    orders = [t.order for t in tasks]
    assert orders == sorted(orders)  # served in the order they arrived


async def test_a_caller_waiting_for_room_still_times_out(make_flow, tmp_path):
    flow = make_flow(FlowStep(Recorder("r")), queue_size=1)
    gate = Gate(tmp_path)
    busy = [asyncio.ensure_future(flow.process(Task(0).gated(gate), timeout_sec=WAIT))]
    await gate.reached()  # one in the handler
    busy.append(asyncio.ensure_future(flow.process(Task(1), timeout_sec=WAIT)))
    await asyncio.sleep(0)  # one filling the queue
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        await asyncio.wait_for(flow.process(Task(9), timeout_sec=0.2), WAIT)
    assert time.monotonic() - started < 0.6
    gate.open()
    await asyncio.wait_for(asyncio.gather(*busy), WAIT)
    task = Task(3)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.trail == ["r"]


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_idle_workers_do_not_spin(make_flow):
    """Workers spin for the next task only while spinning catches tasks:
    an idle flow's workers sleep."""
    flow = make_flow(FlowStep(Square(), nprocs=2), FlowStep(Square()))
    for _ in range(50):  # a sequential caller: the kind of load spinning pays for
        await asyncio.wait_for(flow.process(Task(2)), WAIT)
    workers = sorted(support.children_of(os.getpid()))
    await asyncio.sleep(0.5)  # a few waits that catch nothing
    before = {pid: _cpu_seconds(pid) for pid in workers}
    await asyncio.sleep(2.0)
    used = {pid: _cpu_seconds(pid) - before[pid] for pid in workers}
    assert workers and all(seconds < 0.1 for seconds in used.values()), used
