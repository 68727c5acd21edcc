"""Generative workload (``make bench``): a decode emulator streamed to 64
callers, with static batching and with continuous batching.

One iteration over b active sequences costs ITERATION_S + PER_SEQUENCE_S·b
of CPU (a busy wait, as a model on this machine would); a request wants L
tokens, L uniform in 1..128 (the same seeded lengths for every mode); each
request is a new asyncio task (as a web server makes one per request), at
most CALLERS at a time, each streaming its tokens with ``flow.stream``.

    python generative.py MODE [SCALE]

prints one JSON object: tokens/s, time to first token (p50, p99), the
caller's CPU per streamed part (and beyond the bare harness: the same
callers iterating a stand-in stream). Modes:
``static32`` (batch_size=32: a batch runs until its longest member is done,
its shorter members' callers wait for it; its finished rows are still
computed, as in a padded batch), ``continuous32`` and
``continuous64`` (``continuous=True``; 64 with a 1 ms refill window).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from web_workloads import CpuMeter

sys.path.insert(0, str(Path(__file__).resolve().parent / "http"))
from decode_emulator import ITERATION_S as ITERATION_S  # the cost model, for bench.py
from decode_emulator import PER_SEQUENCE_S as PER_SEQUENCE_S
from decode_emulator import iteration

CALLERS = 64
MAX_TOKENS = 128
REQUESTS = 1200
COMPACT = os.environ.get("COMPACT") == "1"


class Generation(BaseTask):
    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length
        self.written = 0


class StaticDecoder(BaseTaskHandler):
    """A batch decodes until its longest member is done; as a padded batch
    of a real model, every row is computed each iteration (``COMPACT=1`` in
    the environment: only the unfinished ones, an upper bound for static
    batching)."""

    def handle(self, *tasks: Generation) -> None:  # type: ignore[override]
        live = list(tasks)
        while live:
            rows = len(live) if COMPACT else len(tasks)
            iteration(rows)
            for task in live:
                task.written += 1
                task.emit(task.written)
            live = [t for t in live if t.written < t.length]


class ContinuousDecoder(BaseTaskHandler):
    """One iteration over the active set; a finished sequence leaves it."""

    def handle(self, *active: Generation) -> None:  # type: ignore[override]
        iteration(len(active))
        for task in active:
            task.written += 1
            if not task.emit(task.written) or task.written >= task.length:
                task.finish()


MODES: dict[str, Callable[[], FlowStep]] = {
    "static32": lambda: FlowStep(StaticDecoder(), batch_size=32, batch_timeout=0.002),
    "continuous32": lambda: FlowStep(ContinuousDecoder(), batch_size=32, continuous=True),
    "continuous64": lambda: FlowStep(
        ContinuousDecoder(), batch_size=64, batch_timeout=0.001, continuous=True
    ),
}


async def fake_stream(task: Generation, timeout_sec: float = 0) -> AsyncIterator[int]:
    """The bare harness's stand-in for ``flow.stream``: the parts, at once."""
    for i in range(task.length):
        if i % 32 == 0:
            await asyncio.sleep(0)  # a real stream suspends now and then
        yield i + 1


async def run(stream: Callable[..., Any], lengths: list[int]) -> dict[str, Any]:
    semaphore = asyncio.Semaphore(CALLERS)
    firsts: list[float] = []
    parts = 0

    async def call(length: int) -> None:
        nonlocal parts
        async with semaphore:
            started = time.perf_counter()
            got = 0
            async for _part in stream(Generation(length), timeout_sec=120):
                if got == 0:
                    firsts.append(time.perf_counter() - started)
                got += 1
            parts += got

    meter = CpuMeter()
    meter.start()
    await asyncio.gather(*(call(n) for n in lengths))
    used = meter.stop()
    return {"parts": parts, "firsts": firsts, **used}


async def main(mode: str, scale: float) -> dict[str, float]:
    rng = random.Random(7)
    lengths = [rng.randint(1, MAX_TOKENS) for _ in range(int(REQUESTS * scale))]
    harness = await run(fake_stream, lengths)
    flow = Flow(MODES[mode]())
    flow.start(timeout=60)
    try:
        await run(flow.stream, lengths[: CALLERS * 2])  # warm-up
        got = await run(flow.stream, lengths)
    finally:
        await flow.stop()
    parts = got["parts"]
    assert parts == sum(lengths), (parts, sum(lengths))
    firsts = sorted(got["firsts"])
    caller = got["caller_cpu_s"] / parts * 1e6
    bare = harness["caller_cpu_s"] / harness["parts"] * 1e6
    return {
        "tokens_per_s": parts / got["wall_s"],
        "ttft_p50_ms": statistics.median(firsts) * 1e3,
        "ttft_p99_ms": firsts[int(len(firsts) * 0.99)] * 1e3,
        "caller_cpu_per_part_us": caller,
        "caller_beyond_harness_us": caller - bare,
        "parts": float(parts),
    }


if __name__ == "__main__":
    name = sys.argv[1]
    size = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    print(json.dumps(asyncio.run(main(name, size))))
