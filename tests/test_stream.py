"""Streamed parts (``task.emit`` / ``Flow.stream``) and continuous batching,
through real worker processes; every wait is bounded."""

from __future__ import annotations

import asyncio

import pytest
from aqueduct import BaseTask, FlowStep
from aqueduct.exceptions import FlowError, HandlerError, TaskTimeoutError
from generators import Blobs, Counter, Decoder, Prompt, noted
from support import eventually_async

WITHIN = 20.0


async def collect(flow, task, timeout_sec: float = 10.0) -> list:
    async def run() -> list:
        return [part async for part in flow.stream(task, timeout_sec=timeout_sec)]

    return await asyncio.wait_for(run(), WITHIN)


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
async def test_parts_arrive_in_order_then_the_final_fields(make_flow, start_method) -> None:
    flow = make_flow(FlowStep(Counter()), mp_start_method=start_method)
    task = Prompt("a", 20)
    parts = await collect(flow, task)
    assert parts == [f"a:{i}" for i in range(20)]
    assert task.text == "a done"


async def test_parts_of_a_batch_reach_their_own_callers(make_flow) -> None:
    flow = make_flow(FlowStep(Counter(delay=0.001), batch_size=8, batch_timeout=0.05))
    tasks = [Prompt(f"t{i}", 5 + i) for i in range(8)]
    results = await asyncio.gather(*(collect(flow, t) for t in tasks))
    for i, (task, parts) in enumerate(zip(tasks, results, strict=True)):
        assert parts == [f"t{i}:{j}" for j in range(5 + i)]
        assert task.text == f"t{i} done"


async def test_every_step_streams(make_flow) -> None:
    flow = make_flow(FlowStep(Counter(prefix="first-")), FlowStep(Counter(prefix="second-")))
    task = Prompt("a", 2)
    parts = await collect(flow, task)
    assert parts == ["first-a:0", "first-a:1", "second-a:0", "second-a:1"]
    assert task.steps == ["first-", "second-"]
    assert task.text == "second-a done"


async def test_priorities_and_process_with_an_emitting_handler(make_flow) -> None:
    flow = make_flow(FlowStep(Counter()), queue_priorities=3)
    task = Prompt("p", 3)
    task.set_priority(2)
    assert await collect(flow, task) == ["p:0", "p:1", "p:2"]
    quiet = Prompt("q", 3)  # process: the parts are not sent, emit says go on
    assert await asyncio.wait_for(flow.process(quiet), WITHIN)
    assert quiet.text == "q done" and quiet.sent == 3


async def test_big_parts_go_through_shared_memory(make_flow) -> None:
    flow = make_flow(FlowStep(Blobs()))
    parts = await collect(flow, Prompt("b", 3))
    assert [bytes(p[:1]) for p in parts[:3]] == [b"\x00", b"\x01", b"\x02"]
    assert all(len(p) == 1 << 20 and type(p) is bytes for p in parts[:3])
    if len(parts) == 4:  # numpy is installed
        assert parts[3].shape == (1 << 18,) and int(parts[3][-1]) == (1 << 18) - 1


async def test_an_error_after_some_parts_comes_after_them(make_flow) -> None:
    flow = make_flow(FlowStep(Counter()))
    got = []
    with pytest.raises(HandlerError, match="broke after 2 parts") as raised:
        async for part in flow.stream(Prompt("e", -1)):
            got.append(part)
    assert isinstance(raised.value, FlowError)
    assert got == ["e:0", "e:1"]
    assert await collect(flow, Prompt("after", 1)) == ["after:0"]  # the flow serves on


async def test_a_caller_that_breaks_stops_the_work_and_the_batch_goes_on(
    make_flow, tmp_path
) -> None:
    log = str(tmp_path / "log")
    flow = make_flow(FlowStep(Counter(delay=0.01), batch_size=2, batch_timeout=0.2))
    leaver, stayer = Prompt("leaver", 1000, log), Prompt("stayer", 40, log)

    async def leave() -> list:
        got = []
        async for part in flow.stream(leaver, timeout_sec=10):
            got.append(part)
            if len(got) == 3:
                break
        return got

    got, parts = await asyncio.wait_for(asyncio.gather(leave(), collect(flow, stayer)), WITHIN)
    assert got == ["leaver:0", "leaver:1", "leaver:2"]
    assert parts == [f"stayer:{i}" for i in range(40)]
    stopped = await eventually_async(
        lambda: [line for line in noted(log) if line.startswith("stopped leaver")]
    )
    assert int(stopped[0].split()[-1]) < 1000


async def test_a_cancelled_caller_stops_the_work(make_flow, tmp_path) -> None:
    log = str(tmp_path / "log")
    flow = make_flow(FlowStep(Counter(delay=0.01)))
    first = asyncio.Event()

    async def consume() -> None:
        async for _part in flow.stream(Prompt("c", 1000, log), timeout_sec=10):
            first.set()

    caller = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), WITHIN)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await eventually_async(lambda: any(line.startswith("stopped c") for line in noted(log)))


async def test_a_timeout_mid_stream(make_flow, tmp_path) -> None:
    log = str(tmp_path / "log")
    flow = make_flow(FlowStep(Counter(delay=0.02)))
    got = []
    with pytest.raises(TaskTimeoutError):
        async for part in flow.stream(Prompt("slow", 10_000, log), timeout_sec=0.5):
            got.append(part)
    assert 3 <= len(got) < 10_000
    await eventually_async(lambda: any(line.startswith("stopped slow") for line in noted(log)))


async def test_continuous_batching_admits_and_releases_between_iterations(
    make_flow, tmp_path
) -> None:
    log = str(tmp_path / "log")
    flow = make_flow(FlowStep(Decoder(iteration=0.01), batch_size=4, continuous=True))
    long = Prompt("long", 200, log)
    stream = flow.stream(long, timeout_sec=15)
    first = await asyncio.wait_for(stream.__anext__(), WITHIN)
    assert first == "long:1/1"
    short = Prompt("short", 3, log)
    parts = await collect(flow, short)  # joins while long runs, leaves after 3
    assert [p.split("/")[0] for p in parts] == ["short:1", "short:2", "short:3"]
    assert all(p.endswith("/2") for p in parts), parts  # it shared iterations with long
    assert short.text.startswith("short done")
    rest = [part async for part in stream]
    assert len(rest) == 199 and rest[-1] == "long:200/1"  # alone again after short left
    assert long.text.startswith("long done")


async def test_continuous_batching_drops_a_task_whose_caller_left(make_flow, tmp_path) -> None:
    log = str(tmp_path / "log")
    flow = make_flow(FlowStep(Decoder(iteration=0.01), batch_size=4, continuous=True))
    stayer = asyncio.create_task(collect(flow, Prompt("stayer", 60, log)))
    got = []
    async for part in flow.stream(Prompt("leaver", 10_000, log), timeout_sec=10):
        got.append(part)
        if len(got) == 5:
            break
    parts = await asyncio.wait_for(stayer, WITHIN)
    assert len(parts) == 60
    emitted = [line for line in noted(log) if line.startswith("emitted leaver")]
    assert len(emitted) < 100  # it left the active set soon after its caller


async def test_continuous_batching_fails_the_active_set_when_the_handler_raises(
    make_flow,
) -> None:
    flow = make_flow(FlowStep(Counter(), continuous=True))  # never finishes: raises at 2
    with pytest.raises(HandlerError):
        await collect(flow, Prompt("e", -1))


async def test_emit_outside_a_worker_says_so() -> None:
    with pytest.raises(RuntimeError, match="inside handle"):
        BaseTask().emit("part")


async def test_continuous_batching_waits_for_a_freed_slot_to_refill(make_flow, tmp_path) -> None:
    # a caller that sends its next request as soon as the last one ended
    # joins the very next iteration: the worker waits batch_timeout for it
    log = str(tmp_path / "log")
    flow = make_flow(
        FlowStep(Decoder(iteration=0.01), batch_size=2, batch_timeout=1.0, continuous=True)
    )
    long = flow.stream(Prompt("long", 1000, log), timeout_sec=15)
    assert await asyncio.wait_for(long.__anext__(), WITHIN) == "long:1/1"
    for round_ in range(3):
        await collect(flow, Prompt(f"s{round_}", 2, log))
    await long.aclose()
    iterations = [x.split()[1:] for x in noted(log) if x.startswith("iteration")]
    with_short = [i for i, names in enumerate(iterations) if len(names) == 2]
    first, last = with_short[0], with_short[-1]
    assert last - first + 1 == 6, iterations[first : last + 1]  # 3 x 2, no iteration alone between


async def test_continuous_batching_drops_a_task_whose_timeout_passed(make_flow, tmp_path) -> None:
    log = str(tmp_path / "log")
    flow = make_flow(FlowStep(Decoder(iteration=0.01), batch_size=4, continuous=True))
    got = []
    with pytest.raises(TaskTimeoutError):
        async for part in flow.stream(Prompt("slow", 100_000, log), timeout_sec=0.3):
            got.append(part)
    assert got  # parts came before the timeout
    await collect(flow, Prompt("after", 3, log))
    iterations = [x.split()[1:] for x in noted(log) if x.startswith("iteration")]
    assert ["after"] in iterations
    assert not any("slow" in names and "after" in names for names in iterations)
