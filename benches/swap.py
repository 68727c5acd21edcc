"""A handler replaced under load (``make bench``): 32 callers keep calling a
2-worker step while ``Flow.replace_handler`` swaps its handler for one whose
``on_start`` takes 0.5 s (a model loading).

    python swap.py [SCALE]

prints one JSON object: how long the swap took, the calls failed (the goal
is none), the calls answered before, during and after it, the longest time
no call was answered, and p99 latency before and during the swap.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep

CALLERS = 32
WORK_S = 0.002
LOAD_S = 0.5
PHASE_S = 3.0


class Call(BaseTask):
    def __init__(self) -> None:
        super().__init__()
        self.version = 0


class Model(BaseTaskHandler):
    def __init__(self, version: int, load_s: float = 0.0) -> None:
        self.version = version
        self.load_s = load_s

    def on_start(self) -> None:
        time.sleep(self.load_s)

    def handle(self, *tasks: Call) -> None:
        time.sleep(WORK_S)
        for task in tasks:
            task.version = self.version


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(len(ordered) * 0.99)] * 1e3 if ordered else float("nan")


async def main(scale: float) -> dict[str, float]:
    step = FlowStep(Model(1), nprocs=2)
    flow = Flow(step)
    flow.start(timeout=60)
    answers: list[tuple[float, float, int]] = []  # (answered at, latency, version)
    failed = 0
    stop = False

    async def call() -> None:
        nonlocal failed
        task, started = Call(), time.monotonic()
        try:
            await flow.process(task, timeout_sec=10)
        except Exception:
            failed += 1
            return
        now = time.monotonic()
        answers.append((now, now - started, task.version))

    async def connection() -> None:
        while not stop:
            await asyncio.create_task(call())

    try:
        connections = [asyncio.create_task(connection()) for _ in range(CALLERS)]
        await asyncio.sleep(PHASE_S * scale)
        began = time.monotonic()
        await flow.replace_handler(step, Model(2, LOAD_S))
        ended = time.monotonic()
        await asyncio.sleep(PHASE_S * scale)
        stop = True
        await asyncio.gather(*connections)
    finally:
        await flow.stop()
    times = [at for at, _, _ in answers]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    during = [lat for at, lat, _ in answers if began <= at <= ended]
    return {
        "swap_s": ended - began,
        "failed_calls": float(failed),
        "before": float(sum(1 for at in times if at < began)),
        "during": float(len(during)),
        "after": float(sum(1 for at in times if at > ended)),
        "old_after_swap": float(sum(1 for at, _, v in answers if at > ended and v == 1)),
        "longest_gap_ms": max(gaps) * 1e3,
        "p99_before_ms": p99([lat for at, lat, _ in answers if at < began]),
        "p99_during_ms": p99(during),
    }


if __name__ == "__main__":
    size = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print(json.dumps(asyncio.run(main(size))))
