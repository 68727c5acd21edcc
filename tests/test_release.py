"""A stopped flow holds nothing: ``Flow.stop()`` closes every descriptor and
unmaps every segment of the caller at once, with the ``Flow`` still
referenced and the garbage collector off; a stopped flow starts again on
fresh segments."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import signal

import pytest
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.exceptions import WorkerDiedError
from support import WAIT, descendants_of, eventually_async

START = 30


class Payload(BaseTask):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.data = b"x" * size  # big ones travel through the arenas
        self.size = 0


class Measure(BaseTaskHandler):
    def handle(self, *tasks: Payload) -> None:
        for task in tasks:
            task.size = len(task.data)


def _descriptors() -> collections.Counter[str]:
    """What this process's fds are open on."""
    out: collections.Counter[str] = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[os.readlink(f"/proc/self/fd/{fd}")] += 1
        except OSError:
            pass  # the fd listdir itself used, closed since
    return out


def _memfd_mappings() -> list[str]:
    with open("/proc/self/maps") as maps:
        return [line for line in maps if "memfd:" in line]


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _serve(flow: Flow, calls: int) -> None:
    for at in range(calls):
        task = Payload(1 << 20 if at % 2 else 10)
        assert await flow.process(task, timeout_sec=WAIT)
        assert task.size == len(task.data)


async def test_stop_releases_every_fd_and_mapping_at_once_and_the_flow_starts_again(no_gc):
    flow = Flow(FlowStep(Measure()), FlowStep(Measure(), batch_size=4))
    fds, maps = _descriptors(), _memfd_mappings()
    for _ in range(3):
        flow.start(timeout=START)
        assert _descriptors() != fds
        await _serve(flow, 8)
        await asyncio.wait_for(flow.stop(), WAIT)
        assert _descriptors() == fds, "fds left open: the flow is still referenced, gc off"
        assert _memfd_mappings() == maps


async def test_stop_releases_everything_after_workers_were_killed_under_load(no_gc):
    flow = Flow(FlowStep(Measure(), nprocs=2), FlowStep(Measure()))
    fds, maps = _descriptors(), _memfd_mappings()
    flow.start(timeout=START)
    try:
        load = [asyncio.ensure_future(_serve(flow, 200)) for _ in range(8)]
        for _ in range(3):
            await asyncio.sleep(0.2)
            os.kill(min(descendants_of(os.getpid())), signal.SIGKILL)
            # the flow respawns it, and serves on
            await eventually_async(lambda: len(descendants_of(os.getpid())) == 3, within=WAIT)
        done = await asyncio.wait_for(asyncio.gather(*load, return_exceptions=True), WAIT * 3)
        assert all(r is None or isinstance(r, WorkerDiedError) for r in done), done
        await _serve(flow, 4)
    finally:
        await asyncio.wait_for(flow.stop(graceful=False), WAIT)
    assert _descriptors() == fds
    assert _memfd_mappings() == maps
