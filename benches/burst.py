"""Bursty load on an elastic step (``make bench``): idle, then 64 callers,
then idle — against the same step fixed at its maximum.

The handler stands for a model on an accelerator: 20 ms a task, asleep (so
the step may grow past the cores). Each caller is a keep-alive connection's
loop that makes a new asyncio task per call, as a web server does.

    python burst.py MODE [SCALE]

prints one JSON object: tasks/s and latency (p50, p99) during the burst,
the most workers seen, and for ``elastic`` the seconds from the burst's
end until the step was back at its minimum. Modes: ``fixed``
(``nprocs=MAX``) and ``elastic`` (``nprocs=Elastic(1, MAX,
shrink_after=SHRINK_AFTER)``).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

from aqueduct import BaseTask, BaseTaskHandler, Elastic, Flow, FlowStep

CALLERS = 64
MAX = 8
WORK_S = 0.02
BURST_S = 20.0
IDLE_S = 1.0
SHRINK_AFTER = 3.0


class Request(BaseTask):
    def __init__(self) -> None:
        super().__init__()
        self.done = False


class Accelerated(BaseTaskHandler):
    def handle(self, *tasks: Request) -> None:
        time.sleep(WORK_S)
        for task in tasks:
            task.done = True


def workers(flow: Flow) -> int:
    metrics = flow.metrics()
    assert metrics is not None
    step = metrics.steps[0]
    return step.workers_running + step.workers_starting


async def burst(flow: Flow, seconds: float) -> list[float]:
    latencies: list[float] = []
    until = time.monotonic() + seconds

    async def call() -> None:
        started = time.perf_counter()
        task = Request()
        await flow.process(task, timeout_sec=30)
        assert task.done
        latencies.append(time.perf_counter() - started)

    async def connection() -> None:
        while time.monotonic() < until:
            await asyncio.create_task(call())

    await asyncio.gather(*(connection() for _ in range(CALLERS)))
    return latencies


async def main(mode: str, scale: float) -> dict[str, float]:
    nprocs = MAX if mode == "fixed" else Elastic(1, MAX, shrink_after=SHRINK_AFTER)
    flow = Flow(FlowStep(Accelerated(), nprocs=nprocs))
    flow.start(timeout=60)
    try:
        await asyncio.sleep(IDLE_S)
        most = workers(flow)

        async def watch() -> None:
            nonlocal most
            while True:
                most = max(most, workers(flow))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        started = time.perf_counter()
        latencies = sorted(await burst(flow, BURST_S * scale))
        wall = time.perf_counter() - started
        ended = time.monotonic()
        back = float("nan")
        if mode == "elastic":
            while time.monotonic() - ended < SHRINK_AFTER * 3:
                if workers(flow) == 1:
                    back = time.monotonic() - ended
                    break
                await asyncio.sleep(0.05)
        watcher.cancel()
    finally:
        await flow.stop()
    return {
        "tasks_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "most_workers": float(most),
        "back_to_min_s": back,
    }


if __name__ == "__main__":
    name = sys.argv[1]
    size = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    print(json.dumps(asyncio.run(main(name, size))))
