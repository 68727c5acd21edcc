"""`make bench` (part 2): one vs two Ray Serve replicas of the same Flow on
this machine, and the same Flow without Ray for reference, in one run.

The handler emulates a batched model: a batch costs a fixed CPU time plus a
CPU time per task, spent in the worker (pure Python, holding its GIL). Each
replica's Flow has one worker, so two replicas bring two workers. Callers
drive the deployment through ``FlowHandle`` from this process (closed loop:
each caller sends its next task when the last one is back).

Prints tasks/s and p50/p99 latency per setup and the two-replica speed-up;
``--json`` writes the figures too. Skips (exit 0) when ray is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep

#: CPU time of one batch: fixed part and per task (seconds)
BATCH_COST = 0.002
TASK_COST = 0.0002
BATCH_SIZE = 16


class ModelTask(BaseTask):
    def __init__(self, value: int = 0) -> None:
        super().__init__()
        self.value = value
        self.result: int | None = None


class ModelHandler(BaseTaskHandler):
    """Spins on the CPU for BATCH_COST + TASK_COST per task of the batch."""

    def handle(self, *tasks: ModelTask) -> None:  # type: ignore[override]
        until = time.thread_time() + BATCH_COST + TASK_COST * len(tasks)
        while time.thread_time() < until:
            pass
        for task in tasks:
            task.result = task.value + 1


def build_flow(nprocs: int = 1) -> Flow:
    return Flow(FlowStep(ModelHandler(), batch_size=BATCH_SIZE, nprocs=nprocs))


async def drive(process: Any, callers: int, seconds: float) -> dict[str, float]:
    """``callers`` closed-loop callers for ``seconds`` (after a warm-up)."""
    latencies: list[float] = []
    stop_at = 0.0
    recording = False

    async def caller(n: int) -> None:
        while time.monotonic() < stop_at:
            task = ModelTask(n)
            started = time.perf_counter()
            await process(task, 10.0)
            if recording:
                latencies.append(time.perf_counter() - started)
            assert task.result == n + 1

    stop_at = time.monotonic() + 1.0  # warm-up
    await asyncio.gather(*(caller(n) for n in range(callers)))
    recording = True
    started = time.monotonic()
    stop_at = started + seconds
    await asyncio.gather(*(caller(n) for n in range(callers)))
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "tasks_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
    }


async def without_ray(nprocs: int, callers: int, seconds: float) -> dict[str, float]:
    flow = build_flow(nprocs)
    flow.start(timeout=60)
    try:
        return await drive(flow.process, callers, seconds)
    finally:
        await flow.stop()


def with_ray(replicas: int, callers: list[int], seconds: float) -> dict[int, dict[str, float]]:
    """One deployment of ``replicas`` replicas, driven by each number of
    ``callers`` in turn through a FlowHandle with its default settings."""
    from aqueduct.integrations.ray import FlowHandle, flow_deployment
    from ray import serve

    deployment = flow_deployment(
        build_flow,
        name=f"model{replicas}",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 1},
    )
    app = f"bench{replicas}"
    handle = FlowHandle(serve.run(deployment.bind(), name=app, route_prefix=None))

    async def each() -> dict[int, dict[str, float]]:
        return {n: await drive(handle.process, n, seconds) for n in callers}

    try:
        return asyncio.run(each())
    finally:
        serve.delete(app)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--callers", default="64,256", help="comma-separated caller counts")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    callers = [int(n) for n in args.callers.split(",")]
    try:
        import ray
    except ImportError:
        print("ray is not installed (pip install 'aqueduct[ray]'): Ray benchmark skipped")
        return

    results: dict[str, dict[int, dict[str, float]]] = {}
    for nprocs in (1, 2):
        results[f"Flow, {nprocs} worker(s), no Ray"] = {
            n: asyncio.run(without_ray(nprocs, n, args.seconds)) for n in callers
        }
    here = str(Path(__file__).resolve().parent)
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": here}},
    )
    try:
        for replicas in (1, 2):
            results[f"Ray Serve, {replicas} replica(s)"] = with_ray(replicas, callers, args.seconds)
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()

    print(
        f"\nRay Serve, batched model emulator ({BATCH_COST * 1e3:g} ms + "
        f"{TASK_COST * 1e3:g} ms per task, batch {BATCH_SIZE}, one worker per "
        f"replica), closed-loop callers through FlowHandle, {os.cpu_count()} CPUs"
    )
    print(f"{'setup':30} {'callers':>7} {'tasks/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, by_callers in results.items():
        for n, figures in by_callers.items():
            print(
                f"{name:30} {n:>7} {figures['tasks_per_s']:>10,.0f} "
                f"{figures['p50_ms']:>8.1f} {figures['p99_ms']:>8.1f}"
            )
    for n in callers:
        one = results["Ray Serve, 1 replica(s)"][n]["tasks_per_s"]
        two = results["Ray Serve, 2 replica(s)"][n]["tasks_per_s"]
        print(f"two replicas vs one, {n} callers: {two / one:.2f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    # run from the module, not __main__: replicas and workers import the
    # task and handler classes by name (this folder is on their PYTHONPATH)
    import ray_bench

    ray_bench.main()
