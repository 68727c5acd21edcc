"""Latency objectives (``FlowStep(latency_objective=...)``): the step learns
what a batch costs, batches for the objective, and refuses at once what
cannot make it (``OverloadedError``). Real workers, bounded waits."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import time
from pathlib import Path

import pytest
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.exceptions import OverloadedError
from support import WAIT
from test_http import call
from test_http import service as serve_script

OBJECTIVE = 0.05
#: The model emulator: 2 ms + 0.2 ms per task of a batch.
FIXED, PER_TASK = 0.002, 0.0002


class Costed(BaseTask):
    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.batch = 0


class Emulator(BaseTaskHandler):
    """Sleeps as a batched model would, ``scale`` times as long."""

    def handle(self, *tasks: Costed) -> None:  # type: ignore[override]
        scale = max(t.scale for t in tasks)
        time.sleep(scale * (FIXED + PER_TASK * len(tasks)))
        for task in tasks:
            task.batch = len(tasks)


async def timed(flow: Flow, task: Costed) -> tuple[str, float, int]:
    """What became of ``task`` (answered, rejected) and after how long."""
    started = time.monotonic()
    try:
        await flow.process(task, timeout_sec=WAIT)
    except OverloadedError:
        return "rejected", time.monotonic() - started, 0
    return "answered", time.monotonic() - started, task.batch


async def warm(flow: Flow, scale: float = 1.0) -> None:
    """Batches of several sizes, so the step learns its cost."""
    for size in (1, 4, 8, 16, 1, 8, 2, 12):
        await asyncio.wait_for(
            asyncio.gather(*(flow.process(Costed(scale), timeout_sec=WAIT) for _ in range(size))),
            WAIT,
        )


async def burst(flow: Flow, count: int, scale: float = 1.0) -> list[tuple[str, float, int]]:
    calls = (timed(flow, Costed(scale)) for _ in range(count))
    return await asyncio.wait_for(asyncio.gather(*calls), WAIT * 2)


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (-1, ValueError),
        (0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("0.05", TypeError),
        (True, TypeError),
    ],
)
def test_bad_objectives_are_refused_when_the_step_is_made(value, error):
    with pytest.raises(error, match="latency_objective"):
        FlowStep(Emulator(), latency_objective=value)
    with pytest.raises(error, match="latency_objective"):
        Flow(Emulator(), latency_objective=value)


def test_continuous_steps_take_no_objective_yet():
    with pytest.raises(ValueError, match="continuous"):
        FlowStep(Emulator(), batch_size=8, continuous=True, latency_objective=0.05)
    with pytest.raises(ValueError, match="continuous"):
        Flow(FlowStep(Emulator(), continuous=True), latency_objective=0.05)


async def test_under_a_burst_it_refuses_what_cannot_make_it_and_answers_the_rest_in_time(
    make_flow,
):
    flow = make_flow(FlowStep(Emulator(), batch_size=32, latency_objective=OBJECTIVE))
    await warm(flow)
    # 600 at once: 3 objectives' worth of work at 32 per 8.4 ms. The caller's
    # own loop spends part of the objective pushing them before it can read
    # an answer (2,000 took ~30 ms of it on a slow 2-core day), so what fits
    # is 3 to 5 batches of 32, not the 5.3 of an idle caller
    outcomes = await burst(flow, 600)
    answered = [t for what, t, _ in outcomes if what == "answered"]
    rejected = [t for what, t, _ in outcomes if what == "rejected"]
    assert len(answered) + len(rejected) == 600
    assert rejected, "what cannot make it is refused"
    assert len(answered) >= 96, f"it serves what it can in time: {len(answered)}"
    # answered within the objective (with room for a 2-core machine's jitter)
    assert p(answered, 0.95) <= OBJECTIVE * 1.5, sorted(answered)[-20:]
    assert max(answered) <= OBJECTIVE * 3
    batches = [size for what, _, size in outcomes if what == "answered"]
    assert max(batches) > 16, "it batches for the objective"
    # and keeps serving afterwards
    assert (await timed(flow, Costed()))[0] == "answered"


async def test_without_an_objective_nothing_is_refused(make_flow):
    flow = make_flow(FlowStep(Emulator(), batch_size=32))
    await warm(flow)
    outcomes = await burst(flow, 600)
    assert {what for what, _, _ in outcomes} == {"answered"}
    slowest = max(t for _, t, _ in outcomes)
    assert slowest > OBJECTIVE, "the same burst is late without one"


async def test_a_handler_that_becomes_slower_is_followed(make_flow):
    flow = make_flow(FlowStep(Emulator(), batch_size=32), latency_objective=OBJECTIVE)
    await warm(flow)
    await warm(flow, scale=3.0)  # it learns the new cost
    outcomes = await burst(flow, 1000, scale=3.0)
    answered = [t for what, t, _ in outcomes if what == "answered"]
    assert answered and any(what == "rejected" for what, _, _ in outcomes)
    assert p(answered, 0.95) <= OBJECTIVE * 1.5, sorted(answered)[-20:]


async def test_an_objective_with_little_load_answers_everything_at_once(make_flow):
    flow = make_flow(FlowStep(Emulator(), batch_size=32, latency_objective=OBJECTIVE))
    await warm(flow)
    for _ in range(20):
        what, took, _ = await timed(flow, Costed())
        assert what == "answered" and took <= OBJECTIVE


@pytest.mark.parametrize("metrics", [True, False])
async def test_what_cannot_make_it_is_refused_at_once_not_after_waiting_in_the_queue(
    make_flow, metrics
):
    # (without metrics too: the schedule a step's workers share is not one)
    flow = make_flow(
        FlowStep(Emulator(), batch_size=32, latency_objective=OBJECTIVE), metrics_enabled=metrics
    )
    await warm(flow)
    outcomes = await burst(flow, 2000)
    rejected = [t for what, t, _ in outcomes if what == "rejected"]
    assert len(rejected) > 1000, len(rejected)
    # refused when pushed: a worker would refuse it only once it had
    # waited about the objective in the queue
    assert p(rejected, 0.5) <= OBJECTIVE / 5, sorted(rejected)[:: len(rejected) // 10]


class Then(BaseTaskHandler):
    """A second step: 5 ms a batch."""

    def handle(self, *tasks: Costed) -> None:  # type: ignore[override]
        time.sleep(0.005)


async def test_the_objective_is_end_to_end_across_steps(make_flow):
    flow = make_flow(
        FlowStep(Emulator(), batch_size=32),
        FlowStep(Then(), batch_size=32),
        latency_objective=OBJECTIVE,
    )
    await warm(flow)
    outcomes = await burst(flow, 1500)
    answered = [t for what, t, _ in outcomes if what == "answered"]
    assert answered and any(what == "rejected" for what, _, _ in outcomes)
    assert p(answered, 0.95) <= OBJECTIVE * 1.5, sorted(answered)[-20:]


def test_over_http_a_refused_request_is_a_429_with_retry_after_and_counted():
    service = Path(__file__).parent / "objective_service.py"
    with serve_script(service) as (port, _):
        warming = []
        for size in (1, 3, 8, 2, 6):  # it learns its cost (and may refuse some)
            with concurrent.futures.ThreadPoolExecutor(size) as pool:
                warming += [a[0] for a in pool.map(lambda _: call(port, {}), range(size))]
        with concurrent.futures.ThreadPoolExecutor(120) as pool:
            answers = list(pool.map(lambda _: call(port, {}), range(120)))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 429}, statuses
        assert statuses.count(200) >= 8 and statuses.count(429) >= 20, statuses
        refused = next(a for a in answers if a[0] == 429)
        assert refused[1]["retry-after"] == "1"
        assert json.loads(refused[2])["type"] == "OverloadedError"
        page = call(port, path="/metrics", method="GET")[2].decode()
        line = next(x for x in page.splitlines() if 'reason="rejected"' in x)
        assert float(line.rsplit(" ", 1)[1]) == statuses.count(429) + warming.count(429)
