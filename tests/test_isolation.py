"""What a worker's native code scribbling over shared memory can and cannot
do to the web process and to later flows. Every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from aqueduct import FlowStep
from aqueduct.exceptions import FlowError, SharedMemoryCorruptError
from support import (
    ArrayTask,
    Doubler,
    Recorder,
    Scribbler,
    SlowSquare,
    Square,
    Task,
    children_of,
    eventually,
    eventually_async,
    running,
    scribble,
)

WAIT = 20


@pytest.mark.parametrize(
    ("seed", "target"),
    [
        (1, "aqueduct-queue"),  # the rings: indices, sequence words, messages
        (2, "aqueduct-arena"),  # block headers and data
        (3, "aqueduct-control"),  # claims, cancel set, metrics
        (4, "aqueduct-"),  # everything at once
    ],
)
async def test_a_flow_started_after_a_scribbled_one_gets_fresh_segments(make_flow, seed, target):
    broken = make_flow(FlowStep(Scribbler()), FlowStep(Scribbler()))
    warm = ArrayTask(np.arange(100_000, dtype=np.int64))  # blocks in the arenas
    await asyncio.wait_for(broken.process(warm, timeout_sec=WAIT), WAIT)
    vandal = Task(-13, sleep=seed)
    vandal.target = target  # type: ignore[attr-defined]
    started = time.monotonic()
    try:
        await asyncio.wait_for(broken.process(vandal, timeout_sec=2), WAIT)
    except FlowError:
        pass  # whatever the scribbled segments made of the answer: an error or a result
    assert time.monotonic() - started < 2 + 1, "the call outlived its timeout"
    if target in ("aqueduct-queue", "aqueduct-"):
        # a respawned worker finds the queues corrupt and says so; the next
        # calls restart the same flow on fresh segments: it serves again
        # within a few seconds, with no action of ours
        await _served_again(broken, within=10)
        assert broken.failure is None
    # the web process (this one) is unharmed, and stopping is bounded
    await asyncio.wait_for(broken.stop(graceful=False), WAIT)

    fresh = make_flow(FlowStep(Doubler()))
    array = np.arange(1_000_000, dtype=np.int64)  # 8 MB: through the arenas
    task = ArrayTask(array)
    await asyncio.wait_for(fresh.process(task, timeout_sec=WAIT), WAIT)
    assert (task.out == array * 2).all()
    small = ArrayTask(np.array([3]))
    await asyncio.wait_for(fresh.process(small, timeout_sec=WAIT), WAIT)
    assert list(small.out) == [6]


async def _served_again(flow, within: float) -> None:
    """Calls ``flow`` until it answers right; fails past ``within`` seconds."""

    async def served() -> bool:
        task = Task(5)
        try:
            await asyncio.wait_for(flow.process(task, timeout_sec=2), WAIT)
        except FlowError:
            return False
        return task.result == 25

    await eventually_async(served, within=within, every=0, what="the flow serving again")


#: Scribbles from here on leave a queue's magic and layout words alone: the
#: segment still looks like a queue; its indices, sequence words, flags and
#: messages are noise.
PAST_LAYOUT = 64


async def test_a_worker_that_meets_scribbled_rings_fails_its_tasks_clearly(make_flow):
    flow = make_flow(FlowStep(Scribbler()))
    await asyncio.wait_for(flow.process(Task(2), timeout_sec=WAIT), WAIT)
    vandal = Task(-13, sleep=5)
    vandal.target = "aqueduct-queue"  # type: ignore[attr-defined]
    vandal.skip = PAST_LAYOUT  # type: ignore[attr-defined]
    started = time.monotonic()
    with pytest.raises(SharedMemoryCorruptError):  # not a timeout: found, and said
        await asyncio.wait_for(flow.process(vandal, timeout_sec=5), WAIT)
    assert time.monotonic() - started < 5
    await _served_again(flow, within=10)


async def test_the_web_process_never_trusts_a_scribbled_result_ring(make_flow):
    flow = make_flow(FlowStep(SlowSquare()))
    await asyncio.wait_for(flow.process(Task(2), timeout_sec=WAIT), WAIT)
    call = asyncio.ensure_future(flow.process(Task(3, sleep=0.1), timeout_sec=5))
    await asyncio.sleep(0)  # submitted
    # the loop is held: the answer waits, unread, in the result queue
    eventually(lambda: flow.metrics().steps[-1].queue_size > 0, what="the answer in its ring")
    assert scribble(seed=6, names=("aqueduct-queue",), skip=PAST_LAYOUT) > 0
    started = time.monotonic()
    with pytest.raises(SharedMemoryCorruptError):
        await asyncio.wait_for(call, WAIT)
    assert time.monotonic() - started < 4, "found when read, not at the call's timeout"
    assert flow.failure is None, "the next call heals it"
    await _served_again(flow, within=10)


async def test_a_call_into_scribbled_rings_raises_and_the_next_heals(make_flow):
    flow = make_flow(FlowStep(Square()))
    await asyncio.wait_for(flow.process(Task(2), timeout_sec=WAIT), WAIT)
    assert scribble(seed=8, names=("aqueduct-queue",), skip=PAST_LAYOUT) > 0
    with pytest.raises(FlowError):
        await asyncio.wait_for(flow.process(Task(3), timeout_sec=5), WAIT)
    await _served_again(flow, within=10)


async def test_a_flow_whose_shared_memory_keeps_being_corrupted_stops_healing(make_flow):
    flow = make_flow(FlowStep(Scribbler()))
    for heal in range(4):
        vandal = Task(-13, sleep=heal)
        vandal.target = "aqueduct-queue"  # type: ignore[attr-defined]
        try:
            await asyncio.wait_for(flow.process(vandal, timeout_sec=2), WAIT)
        except FlowError:
            pass
        if heal < 3:
            await _served_again(flow, within=10)

    async def given_up() -> bool:  # three heals a minute at most: it stays down now
        if flow.failure is not None:
            return True
        with contextlib.suppress(FlowError):
            await asyncio.wait_for(flow.process(Task(1), timeout_sec=1), WAIT)
        return False

    await eventually_async(given_up, every=0, what="the flow giving up healing")
    assert "corrupt" in flow.failure
    with pytest.raises(FlowError, match="corrupt"):
        await asyncio.wait_for(flow.process(Task(2), timeout_sec=WAIT), WAIT)


FORKED_HEAL = """
import asyncio, os, sys, time
sys.path.insert(0, {tests!r})
from aqueduct import Flow, FlowStep
from aqueduct.exceptions import FlowError, SharedMemoryCorruptError
from support import Scribbler, Task, scribble

flow = Flow(FlowStep(Scribbler()), clients=3)
flow.start(timeout=30)


async def call(value, timeout=5):
    task = Task(value)
    await flow.process(task, timeout_sec=timeout)
    return task.result


async def served(who):  # calls until one is answered right
    deadline = time.monotonic() + 15
    while True:
        try:
            if await call(5, 2) == 25:
                print(who + ": served", flush=True)
                return
        except FlowError:
            pass
        if time.monotonic() > deadline:
            print(who + ": never served", flush=True)
            return


async def vandal():
    assert await call(3) == 9
    started = time.monotonic()
    try:
        if {by_worker!r}:  # a worker scribbles and finds it: we are told at once
            task = Task(-13, sleep=3)
            task.target, task.skip = "aqueduct-queue", 64
            await flow.process(task, timeout_sec=10)
        else:  # this process scribbles, and finds it on its next call
            scribble(seed=9, names=("aqueduct-queue",), skip=64)
            await call(4, 10)
        print("vandal: no error", flush=True)
    except SharedMemoryCorruptError:
        print(f"vandal: corrupt {{time.monotonic() - started:.1f}}", flush=True)
    await served("vandal")
    await flow.stop()


async def bystander():  # forked before the heal, first call after it
    await served("bystander")
    await flow.stop()


gate_r, gate_w = os.pipe()
first = os.fork()
if first == 0:
    asyncio.run(vandal())
    os._exit(0)
second = os.fork()
if second == 0:
    os.read(gate_r, 1)
    asyncio.run(bystander())
    os._exit(0)
# the owner runs no loop meanwhile, as a pre-fork server's master: it heals in a thread
_, status = os.waitpid(first, 0)
os.write(gate_w, b"x")
_, status2 = os.waitpid(second, 0)
print("children exited", os.waitstatus_to_exitcode(status), os.waitstatus_to_exitcode(status2))


async def owner():
    await served("owner")
    await flow.stop()


asyncio.run(owner())
"""


@pytest.mark.parametrize("by_worker", [True, False], ids=["found-by-a-worker", "found-by-a-client"])
def test_forked_clients_follow_a_healed_flow_onto_fresh_segments(tmp_path, by_worker):
    script = tmp_path / "prefork.py"
    script.write_text(FORKED_HEAL.format(tests=str(Path(__file__).parent), by_worker=by_worker))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-3000:]
    said = [line.split()[-1] for line in out.splitlines() if line.startswith("vandal: corrupt")]
    assert said and float(said[0]) < 5, out  # said so, rather than timed out
    for who in ("vandal", "bystander", "owner"):
        assert f"{who}: served" in out, out + done.stderr[-3000:]
    assert "children exited 0 0" in out, out


FORKED_SERVER = """
import asyncio, os, sys, time
sys.path.insert(0, {tests!r})
from aqueduct import Flow, FlowStep
from support import Gate, Recorder, Task

flow = Flow(FlowStep(Recorder("r")), clients=2)
flow.start(timeout=30)
if os.fork() == 0:  # a pre-fork server's worker: a client of the owner's flow
    async def main():
        await flow.process(Task(1), timeout_sec=10)
        gate = Gate({tmp!r})
        print("ready", gate.reached_path, flush=True)
        started = time.monotonic()
        try:
            await flow.process(Task(2).gated(gate), timeout_sec=30)
            print("in flight: no error", flush=True)
        except Exception as exc:
            took = time.monotonic() - started
            print(f"in flight: {{type(exc).__name__}} {{took:.2f}}", flush=True)
        print("failure:", flow.failure is not None, flush=True)
        started = time.monotonic()
        try:
            await flow.process(Task(3), timeout_sec=30)
            print("next: no error", flush=True)
        except Exception as exc:
            print(f"next: {{type(exc).__name__}} {{time.monotonic() - started:.2f}}", flush=True)
        await flow.stop()
    asyncio.run(main())
    os._exit(0)
print("owner", os.getpid(), flush=True)
time.sleep(120)
"""


def test_a_forked_client_learns_at_once_that_the_owner_died(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(FORKED_SERVER.format(tests=str(Path(__file__).parent), tmp=str(tmp_path)))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        ready = next(line for line in lines if line.startswith("ready"))
        reached = ready.split()[1]
        eventually(lambda: os.path.exists(reached), what=lines)  # the task is in the worker
        os.kill(proc.pid, signal.SIGKILL)  # the owner, and so its workers
        proc.wait(timeout=WAIT)
        out, _ = proc.communicate(timeout=WAIT)  # the child's lines, until it exits
        report = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        kind, took = report["in flight"].split()
        assert kind == "FlowError" and float(took) < 2.0, out
        assert report["failure"] == "True", out
        kind, took = report["next"].split()
        assert kind == "FlowError" and float(took) < 0.5, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)


FORKED_AIOHTTP = """
import os, socket, sys, time
sys.path.insert(0, {tests!r})
from aiohttp import web
from aqueduct import Flow, FlowStep
from aqueduct.integrations.aiohttp import AppIntegrator
from support import Square

flow = Flow(FlowStep(Square()), clients=2)
flow.start(timeout=30)
sock = socket.create_server(("127.0.0.1", 0))
for _ in range(2):
    if os.fork() == 0:  # two pre-forked servers of the owner's flow
        app = web.Application()
        AppIntegrator(app).add_flow(flow)
        web.run_app(app, sock=sock, print=None, handle_signals=True, shutdown_timeout=2)
        os._exit(0)
print("owner", os.getpid(), flush=True)
time.sleep(120)
"""


def test_forked_aiohttp_servers_stop_when_the_owner_dies(tmp_path):
    pytest.importorskip("aiohttp")
    from support import descendants_of

    script = tmp_path / "servers.py"
    script.write_text(FORKED_AIOHTTP.format(tests=str(Path(__file__).parent)))
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    family: set[int] = set()
    try:
        assert proc.stdout.readline().startswith("owner")  # type: ignore[union-attr]
        # a worker, two servers
        family = eventually(lambda: len(found := descendants_of(proc.pid)) >= 3 and found)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=WAIT)
        eventually(
            lambda: not any(map(running, family)),
            within=5,
            what=lambda: f"left running: {[pid for pid in family if running(pid)]}",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
        for pid in family:  # whatever outlived the owner (a failed test)
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def _workers_of(pid: int) -> list[int]:
    """This process's aqueduct worker processes."""
    found = []
    for child in children_of(pid):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if b"aqueduct._worker.bootstrap" in f.read():
                    found.append(child)
        except OSError:
            pass
    return found


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


#: How long the chaos test runs (AQUEDUCT_CHAOS_SECONDS: longer runs by hand).
CHAOS_SECONDS = float(os.environ.get("AQUEDUCT_CHAOS_SECONDS", "20"))


async def test_chaos_of_killed_and_stopped_workers_under_load(make_flow):
    """300 callers for ``CHAOS_SECONDS`` while workers are SIGKILLed and
    SIGSTOPped at random, and once a worker scribbles over the queues (the
    flow heals under load): every call ends within its timeout with the
    right result or a FlowError, and fds, memory and processes come back."""
    rng = random.Random(7)
    fds_before = _open_fds()
    flow = make_flow(FlowStep(Recorder("a"), nprocs=2), FlowStep(Scribbler()))
    timeout, slack = 2.0, 1.5
    outcomes = {"ok": 0, "error": 0}
    late: list[float] = []
    slowest: list[float] = []
    started = time.monotonic()
    running_until = started + CHAOS_SECONDS

    async def caller(n: int) -> None:
        i = n
        while time.monotonic() < running_until:
            task = Task(i % 1000)
            started = time.monotonic()
            try:
                await asyncio.wait_for(flow.process(task, timeout_sec=timeout), WAIT)
                assert task.result == (i % 1000) ** 2, "a wrong result"
                outcomes["ok"] += 1
            except FlowError:
                outcomes["error"] += 1
            took = time.monotonic() - started
            slowest.append(took)
            if len(slowest) > 1:
                slowest[:] = [max(slowest)]
            if took > timeout + slack:
                late.append(took)
            i += 300

    async def vandal() -> None:
        await asyncio.sleep(CHAOS_SECONDS / 2)
        task = Task(-13)
        task.target, task.skip = "aqueduct-queue", 64  # type: ignore[attr-defined]
        with contextlib.suppress(FlowError):
            await asyncio.wait_for(flow.process(task, timeout_sec=timeout), WAIT)

    async def chaos() -> None:
        stopped: list[int] = []
        while time.monotonic() < running_until - 1:
            await asyncio.sleep(rng.uniform(0.3, 0.9))
            workers = _workers_of(os.getpid())
            if not workers:
                continue
            victim = rng.choice(workers)
            with contextlib.suppress(ProcessLookupError):  # gone meanwhile (a heal)
                if rng.random() < 0.3:
                    os.kill(victim, signal.SIGKILL)
                else:
                    os.kill(victim, signal.SIGSTOP)
                    stopped.append(victim)
                    await asyncio.sleep(rng.uniform(0.1, 1.0))
                    os.kill(victim, signal.SIGCONT)
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    rss_before = _rss_kb()
    callers = (caller(n) for n in range(300))
    await asyncio.wait_for(asyncio.gather(chaos(), vandal(), *callers), CHAOS_SECONDS + 60)
    print(f"chaos for {CHAOS_SECONDS:.0f} s: {outcomes}, slowest {max(slowest, default=0):.2f} s")
    assert not late, f"calls outlived their timeout: {sorted(late)[-3:]}"
    assert outcomes["ok"] > 80 * CHAOS_SECONDS, outcomes  # it kept serving through it
    await _served_again(flow, within=10)  # and serves after it
    await asyncio.wait_for(flow.stop(graceful=False), WAIT)
    await eventually_async(lambda: not _workers_of(os.getpid()), within=10, what="workers gone")
    assert _open_fds() <= fds_before + 2, " ".join(_fd_targets())
    assert _rss_kb() - rss_before < 100 * 1024, "the caller's memory grew by 100 MB"


def _fd_targets() -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return targets


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
