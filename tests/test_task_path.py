"""Tasks of every shape come back with the handlers' fields set on the
caller's object: plain classes (sent as their class's name and __dict__),
classes that pickle in their own ways, custom update() and __setattr__."""

from __future__ import annotations

import asyncio
import os
import re
import time

import pytest
from aqueduct import BaseTask, FlowStep
from aqueduct.exceptions import TaskTimeoutError
from support import (
    Gate,
    GuardedTask,
    Rebrand,
    Recorder,
    SlottedTask,
    Square,
    StatefulTask,
    Task,
    UpdatingTask,
)

WAIT = 20


@pytest.mark.parametrize("cls", [Task, StatefulTask, SlottedTask, GuardedTask])
async def test_every_task_class_gets_its_results(make_flow, cls):
    flow = make_flow(FlowStep(Square()), FlowStep(Recorder("r")))
    tasks = [cls(i) for i in range(20)]
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), WAIT)
    assert [t.result for t in tasks] == [i * i for i in range(20)]
    assert all(t.trail == ["r"] and t.pid != os.getpid() for t in tasks)
    if cls is SlottedTask:
        assert all(t.extra == "slot" for t in tasks)


async def test_a_custom_update_decides_what_the_caller_gets(make_flow):
    flow = make_flow(FlowStep(Square()))
    task = UpdatingTask(6)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == 36
    assert task.updated_by == "custom update"
    assert task.pid is None  # update() did not take it


async def test_handlers_cannot_change_the_callers_bookkeeping(make_flow):
    flow = make_flow(FlowStep(Rebrand()), queue_priorities=3)
    task = Task(5)
    task.set_priority(2)
    task_id = task.task_id
    await asyncio.wait_for(flow.process(task, timeout_sec=WAIT), WAIT)
    assert task.result == 25
    assert task.task_id == task_id
    assert task.priority == 2
    assert task.expiration_time and task.expiration_time > time.monotonic()


async def test_a_class_defined_in_a_function_travels_by_value(make_flow):
    class Local(BaseTask):
        def __init__(self, value: int) -> None:
            super().__init__()
            self.value = value
            self.result: int | None = None

    flow = make_flow(FlowStep(Square()))
    task = Local(9)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == 81


async def test_each_task_times_out_at_its_own_deadline(make_flow, tmp_path):
    flow = make_flow(FlowStep(Recorder("slow")))
    # the later deadline is submitted first: the earlier one must still fire on time
    gate = Gate(tmp_path)
    patient = asyncio.ensure_future(flow.process(Task(1).gated(gate), timeout_sec=WAIT))
    await gate.reached()
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError, match=re.escape("not done in 0.2 s")):
        await asyncio.wait_for(flow.process(Task(2), timeout_sec=0.2), WAIT)
    assert time.monotonic() - started < 0.5
    gate.open()
    assert await asyncio.wait_for(patient, WAIT) is True


def test_task_ids_are_unique_uuid4_strings():
    ids = {BaseTask().task_id for _ in range(10_000)}
    assert len(ids) == 10_000
    pattern = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    assert all(pattern.match(task_id) for task_id in ids)


def test_a_forked_child_makes_other_task_ids_than_its_parent():
    read, write = os.pipe()
    BaseTask()  # the parent has random bytes ready
    pid = os.fork()
    if pid == 0:
        os.write(write, BaseTask().task_id.encode())
        os._exit(0)
    parent_id = BaseTask().task_id
    child_id = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    os.close(write)
    assert child_id and child_id != parent_id
