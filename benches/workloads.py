"""Benchmark workloads, written against the public API shared by this package
and upstream aqueduct 1.15, so the same file measures both.

Run by ``bench.py`` under each interpreter; prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from web_workloads import NoopHandler, NoopTask, _quiet  # one definition of each

CONCURRENCY = 32


async def _latency(flow: Flow, count: int) -> dict[str, float]:
    for _ in range(200):  # warm-up
        await flow.process(NoopTask(1))
    samples = []
    for i in range(count):
        task = NoopTask(i)
        start = time.perf_counter()
        await flow.process(task)
        samples.append(time.perf_counter() - start)
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
        "mean_us": statistics.fmean(samples) * 1e6,
    }


async def _throughput(flow: Flow, total: int, concurrency: int) -> dict[str, float]:
    per_caller = total // concurrency
    errors = 0

    async def caller(offset: int, count: int) -> None:
        nonlocal errors
        for i in range(count):
            try:
                await flow.process(NoopTask(offset + i), timeout_sec=30)
            except Exception:
                errors += 1

    # warm-up: a tenth of the load, not measured
    await asyncio.gather(*(caller(0, per_caller // 10 + 1) for _ in range(concurrency)))
    errors = 0
    start = time.perf_counter()
    await asyncio.gather(*(caller(c * per_caller, per_caller) for c in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"tasks_per_s": per_caller * concurrency / elapsed, "errors": errors}


class ArrayTask(BaseTask):
    def __init__(self, array: object) -> None:
        super().__init__()
        self.array = array
        self.first: int | None = None


class FirstElement(BaseTaskHandler):
    """Touches the array (reads one element) and sets a small result."""

    def handle(self, *tasks: ArrayTask) -> None:
        for task in tasks:
            task.first = int(task.array[0])  # type: ignore[index]


async def _arrays(flow: Flow, megabytes: int, share: bool, count: int) -> dict[str, float]:
    import numpy as np

    array = np.random.default_rng(0).integers(0, 255, megabytes << 20, dtype=np.uint8)
    samples = []
    for i in range(count + 2):
        task = ArrayTask(array)
        start = time.perf_counter()
        if share:
            task.share_value("array")
        await flow.process(task, timeout_sec=60)
        elapsed = time.perf_counter() - start
        assert task.first == array[0] and task.array.shape == array.shape
        if i >= 2:  # the first rounds fault pages in
            samples.append(elapsed)
        del task
    samples.sort()
    return {"median_ms": samples[len(samples) // 2] * 1e3, "min_ms": samples[0] * 1e3}


class SleepyModel(BaseTaskHandler):
    """A batched model emulator: 1 ms per batch plus 0.05 ms per item."""

    def handle(self, *tasks: NoopTask) -> None:
        time.sleep(0.001 + 0.00005 * len(tasks))
        for task in tasks:
            task.result = task.value


async def _concurrency_sweep(flow: Flow, scale: float) -> dict[str, float]:
    """p50 latency and throughput of a 1-step no-op flow as callers grow."""
    out: dict[str, float] = {}
    for callers in (1, 4, 16, 64, 256):
        per_caller = max(5, int(4000 * scale) // callers)
        samples: list[float] = []

        async def caller(n: int, samples: list[float]) -> None:
            for i in range(n):
                start = time.perf_counter()
                await flow.process(NoopTask(i), timeout_sec=60)
                samples.append(time.perf_counter() - start)

        started = time.perf_counter()
        await asyncio.gather(*(caller(per_caller, samples) for _ in range(callers)))
        elapsed = time.perf_counter() - started
        samples.sort()
        out[f"p50_us@{callers}"] = samples[len(samples) // 2] * 1e6
        out[f"tasks_per_s@{callers}"] = len(samples) / elapsed
    return out


async def _batch_sweep(scale: float) -> dict[str, float]:
    """Throughput of a batched model emulator (128 callers) by batch size."""
    out: dict[str, float] = {}
    for batch_size in (1, 4, 16, 64):
        flow = Flow(FlowStep(SleepyModel(), batch_size=batch_size))
        flow.start()
        try:
            result = await _throughput(flow, int(4000 * scale), 128)
        finally:
            await flow.stop(graceful=False)
        out[f"tasks_per_s@{batch_size}"] = result["tasks_per_s"]
    return out


async def _run(name: str, scale: float) -> dict[str, float]:
    _quiet()
    if name == "batch_sweep":
        return await _batch_sweep(scale)
    if name == "latency_1step":
        flow = Flow(FlowStep(NoopHandler()))
    elif name == "throughput_1step":
        flow = Flow(FlowStep(NoopHandler()))
    elif name == "throughput_1step_nometrics":
        flow = Flow(FlowStep(NoopHandler()), metrics_enabled=False)
    elif name == "throughput_3step":
        flow = Flow(FlowStep(NoopHandler()), FlowStep(NoopHandler()), FlowStep(NoopHandler()))
    elif name == "throughput_batch32":
        flow = Flow(FlowStep(NoopHandler(), batch_size=32))
    elif name.startswith(("array_", "share_")):
        flow = Flow(FlowStep(FirstElement()))
    elif name in ("overload_1024", "concurrency_sweep"):
        flow = Flow(FlowStep(NoopHandler()))
    else:
        raise SystemExit(f"unknown workload {name}")
    flow.start()
    try:
        if name == "latency_1step":
            return await _latency(flow, int(5000 * scale))
        if name == "concurrency_sweep":
            return await _concurrency_sweep(flow, scale)
        if name == "overload_1024":
            return await _throughput(flow, int(20_000 * max(scale, 1)), 1024)
        if name.startswith(("array_", "share_")):
            megabytes = int(name.split("_")[1].removesuffix("mb"))
            count = max(5, int((30 if megabytes <= 8 else 10) * scale))
            return await _arrays(flow, megabytes, name.startswith("share_"), count)
        return await _throughput(flow, int(40_000 * scale), CONCURRENCY)
    finally:
        await flow.stop(graceful=False)


def main() -> None:
    name = sys.argv[1]
    scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    result = asyncio.run(_run(name, scale))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
