"""Big payloads travel through shared memory: zero-copy views in workers and
results, lifetimes that end with the last user, clear errors when too big."""

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

np = pytest.importorskip("numpy")

from aqueduct import FlowStep  # noqa: E402
from aqueduct.exceptions import AqueductError, SharedMemoryFullError  # noqa: E402
from support import (  # noqa: E402
    ArrayTask,
    Describe,
    Doubler,
    Gate,
    IncrementInPlace,
    Reader,
    Task,
    running,
    shm_backed,
)

WAIT = 20
MB = 1 << 20


async def _settle(flow, expected: int, within: float = 5) -> None:
    """Waits until the flow's shared memory drops to `expected` bytes."""
    deadline = time.monotonic() + within
    while flow.shm_used != expected:
        assert time.monotonic() < deadline, f"shm_used stuck at {flow.shm_used}"
        await asyncio.sleep(0.01)


async def test_big_arrays_go_and_come_back_through_shared_memory(make_flow):
    flow = make_flow(FlowStep(Doubler()))
    array = np.arange(8 * MB, dtype=np.uint8)
    task = ArrayTask(array)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.seen_in_shm == [True]  # the worker got a view, not a copy
    assert shm_backed(task.out)  # and the result came back as one
    assert np.array_equal(task.out, array * 2)
    assert array[1] == 1  # the caller's own array was copied, not changed


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.random.default_rng(1).random((512, 300), dtype=np.float32),
        lambda: np.asfortranarray(np.arange(600_000, dtype=np.int64).reshape(1000, 600)),
        lambda: np.arange(4 * MB, dtype=np.uint8)[::2],  # not contiguous: in-band
        lambda: np.array([i * 10**20 for i in range(20_000)], dtype=object),  # objects: in-band
    ],
    ids=["float32-2d", "fortran", "strided", "object-dtype"],
)
async def test_any_array_arrives_intact(make_flow, make):
    flow = make_flow(FlowStep(Doubler()))
    array = make()
    task = ArrayTask(array)
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.out.dtype == array.dtype and task.out.shape == array.shape
    assert (task.out == array * 2).all()


async def test_a_buffer_passes_between_steps_without_a_copy(make_flow, tmp_path):
    flow = make_flow(FlowStep(Reader()), FlowStep(Reader()), FlowStep(Reader()))
    before = flow.shm_used
    gate = Gate(tmp_path)
    task = ArrayTask(np.full(8 * MB, 5, dtype=np.uint8)).gated(gate)
    run = asyncio.ensure_future(flow.process(task, timeout_sec=WAIT))
    await gate.reached()  # the first reader holds the task
    # one 8 MiB block for the whole trip: no step copied it again
    assert flow.shm_used - before == 8 * MB
    gate.open()
    await asyncio.wait_for(run, WAIT)
    assert task.seen_in_shm == [True, True, True] and task.first == [5, 5, 5]


async def test_blocks_are_freed_when_no_task_or_view_uses_them(make_flow):
    flow = make_flow(FlowStep(Doubler()), FlowStep(Reader()))
    before = flow.shm_used
    for _ in range(20):  # more than the arenas hold if nothing were freed
        task = ArrayTask(np.ones(64 * MB, dtype=np.uint8))
        await asyncio.wait_for(flow.process(task, timeout_sec=WAIT), WAIT)
    assert task.out[0] == 2
    assert flow.shm_used > before  # the last task's result is still viewed
    del task
    await _settle(flow, before)


async def test_bytes_fields_keep_their_types(make_flow):
    flow = make_flow(FlowStep(Describe()))
    task = Task()
    task.raw = b"abcd" * MB  # type: ignore[attr-defined]
    task.buf = bytearray(b"wxyz" * MB)  # type: ignore[attr-defined]
    task.view = memoryview(b"mnop" * MB)  # type: ignore[attr-defined]
    task.small = b"tiny"  # type: ignore[attr-defined]
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result == {
        "raw": ("bytes", 4 * MB, b"abcd"),
        "buf": ("bytearray", 4 * MB, b"wxyz"),
        "view": ("memoryview", 4 * MB, b"mnop"),
        "small": ("bytes", 4, b"tiny"),
    }


async def test_a_buffer_larger_than_the_arena_fails_that_task_only(make_flow):
    flow = make_flow(FlowStep(Doubler()), shm_size=2 * MB)
    with pytest.raises(SharedMemoryFullError) as info:
        await asyncio.wait_for(flow.process(ArrayTask(np.ones(8 * MB, np.uint8))), WAIT)
    assert isinstance(info.value, AqueductError)
    assert str(8 * MB) in str(info.value)
    task = ArrayTask(np.ones(MB, np.uint8))
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.out[0] == 2


async def test_share_value_puts_the_array_in_shared_memory_like_upstream(make_flow):
    flow = make_flow(FlowStep(IncrementInPlace()))
    task = ArrayTask(np.zeros(2 * MB, dtype=np.int32))
    task.share_value("array")
    assert shm_backed(task.array)
    shared = task.array
    await asyncio.wait_for(flow.process(task), WAIT)
    assert (shared == 1).all()  # the handler changed the caller's shared array in place
    assert (task.array == 1).all()
    with pytest.raises(ValueError):
        task.share_value("missing")
    task.text = "not shareable"  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        task.share_value("text")


async def test_share_value_works_while_no_flow_runs(make_flow):
    stopped = make_flow(FlowStep(IncrementInPlace()))
    await asyncio.wait_for(stopped.stop(), WAIT)  # its arena is no longer the one to share in
    task = ArrayTask(np.zeros(MB, dtype=np.int32))
    task.share_value("array")  # an arena of this process's own
    assert shm_backed(task.array)
    flow = make_flow(FlowStep(IncrementInPlace()))
    await asyncio.wait_for(flow.process(task), WAIT)
    assert (task.array == 1).all()


async def test_share_value_with_data_streams_into_shared_memory(make_flow):
    class Body:
        def __init__(self, chunks: list[bytes]) -> None:
            self.chunks = chunks

        async def readany(self) -> bytes:
            return self.chunks.pop(0) if self.chunks else b""

    flow = make_flow(FlowStep(Describe()))
    chunks = [bytes([i]) * (256 * 1024) for i in range(8)]
    task = Task()
    await task.share_value_with_data("body", Body(list(chunks)), 2 * MB)
    assert shm_backed(task.body)  # type: ignore[attr-defined]
    assert bytes(task.body) == b"".join(chunks)  # type: ignore[attr-defined]
    await asyncio.wait_for(flow.process(task), WAIT)
    assert task.result["body"] == ("memoryview", 2 * MB, b"\0\0\0\0")  # type: ignore[index]
    other = Task()
    await other.share_value_with_data("body", Body(list(chunks)).readany, 2 * MB)
    assert len(other.body) == 2 * MB  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        await Task().share_value_with_data("body", Body(list(chunks)), MB)


def _shmem_kb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1])
    raise AssertionError("no Shmem in /proc/meminfo")


SERVICE = textwrap.dedent(
    """
    import asyncio, os, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from support import ArrayTask, Doubler, Reader
    from aqueduct import Flow, FlowStep

    async def main():
        flow = Flow(FlowStep(Doubler()), FlowStep(Reader()))
        flow.start(timeout=30)
        keep = []
        for _ in range(3):
            task = ArrayTask(np.ones(64 << 20, dtype=np.uint8))
            await flow.process(task, timeout_sec=30)
            keep.append(task)
        from support import children_of

        pids = sorted(children_of(os.getpid()))
        print(" ".join(map(str, pids)), flush=True)
        await asyncio.sleep(60)

    if __name__ == "__main__":
        asyncio.run(main())
    """
)


@pytest.mark.parametrize("victim", ["parent", "worker"])
def test_after_sigkill_nothing_remains(tmp_path, victim):
    script = tmp_path / "service.py"
    script.write_text(SERVICE.format(tests=str(Path(__file__).parent)))
    before_files = set(os.listdir("/dev/shm"))
    baseline = _shmem_kb()
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        workers = [int(p) for p in line.split()]
        assert workers, "service did not start"
        during = _shmem_kb()
        assert during - baseline > 200 * 1024, (baseline, during)  # > 200 MiB in use
        if victim == "worker":
            os.kill(workers[0], signal.SIGKILL)
            deadline = time.monotonic() + 5
            while running(workers[0]):  # the parent sees the death before it dies too
                assert time.monotonic() < deadline, "SIGKILL did not end the worker"
                time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(running(pid) for pid in workers):
            assert time.monotonic() < deadline, "workers outlived their parent"
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        while _shmem_kb() - baseline > 32 * 1024:
            assert time.monotonic() < deadline, (baseline, _shmem_kb())
            time.sleep(0.05)
        assert set(os.listdir("/dev/shm")) == before_files
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_an_http_body_streams_into_shared_memory(make_flow, aiohttp_client):
    from aiohttp import web

    flow = make_flow(FlowStep(Describe()))

    async def upload(request: web.Request) -> web.Response:
        task = Task()
        await task.share_value_with_data("body", request.content, request.content_length)
        assert shm_backed(task.body)  # type: ignore[attr-defined]
        await flow.process(task, timeout_sec=WAIT)
        kind, size, head = task.result["body"]  # type: ignore[index]
        return web.json_response({"kind": kind, "size": size, "head": head.decode()})

    app = web.Application()
    app.router.add_post("/upload", upload)
    client = await aiohttp_client(app)
    body = b"HEAD" + os.urandom(3 * MB)
    response = await asyncio.wait_for(client.post("/upload", data=body), WAIT)
    assert response.status == 200
    assert await response.json() == {"kind": "memoryview", "size": len(body), "head": "HEAD"}
