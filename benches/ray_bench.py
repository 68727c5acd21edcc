"""`make bench` (part 2): one vs two Ray Serve replicas of the same Flow on
this machine, and the same Flow without Ray for reference, in one run.

The handler emulates a batched model: a batch costs a fixed CPU time plus a
CPU time per task, spent in the worker (pure Python, holding its GIL). Each
replica's Flow has one worker, so two replicas bring two workers. Callers
drive the deployment through ``FlowHandle`` from this process (closed loop:
each caller sends its next task when the last one is back).

Prints tasks/s and p50/p99 latency per setup and the two-replica speed-up;
It writes ``bench-report/ray.json``. Skips (exit 0) when ray is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from aqueduct import BaseTaskHandler, Flow, FlowStep
from report import FOLDER, Report
from workloads import NoopTask

#: CPU time of one batch: fixed part and per task (seconds)
BATCH_COST = 0.002
TASK_COST = 0.0002
BATCH_SIZE = 16


class ModelHandler(BaseTaskHandler):
    """Spins on the CPU for BATCH_COST + TASK_COST per task of the batch."""

    def handle(self, *tasks: NoopTask) -> None:  # type: ignore[override]
        until = time.thread_time() + BATCH_COST + TASK_COST * len(tasks)
        while time.thread_time() < until:
            pass
        for task in tasks:
            task.result = task.value


async def task_from_request(request: Any) -> NoopTask:
    """HTTP ingress: ``{"value": n}`` makes a task."""
    return NoopTask(int((await request.json())["value"]))


def build_flow(nprocs: int = 1) -> Flow:
    return Flow(FlowStep(ModelHandler(), batch_size=BATCH_SIZE, nprocs=nprocs))


async def drive(process: Any, callers: int, seconds: float) -> dict[str, float]:
    """``callers`` closed-loop callers for ``seconds`` (after a warm-up)."""
    latencies: list[float] = []
    stop_at = 0.0
    recording = False

    async def caller(n: int) -> None:
        while time.monotonic() < stop_at:
            task = NoopTask(n)
            started = time.perf_counter()
            await process(task, 10.0)
            if recording:
                latencies.append(time.perf_counter() - started)
            assert task.result == n

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


def with_ray(
    replicas: int, callers: list[int], seconds: float, http: str | None
) -> tuple[dict[int, dict[str, float]], dict[str, float] | None]:
    """One deployment of ``replicas`` replicas, driven by each number of
    ``callers`` in turn through a FlowHandle with its default settings, then
    (with ``http``, Serve's base URL, and wrk installed) over HTTP by wrk."""
    from aqueduct.integrations.ray import FlowHandle, flow_deployment
    from ray import serve

    deployment = flow_deployment(
        build_flow,
        task_from_request=task_from_request,
        name=f"model{replicas}",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": 1},
    )
    app, route = f"bench{replicas}", f"/model{replicas}"
    handle = FlowHandle(serve.run(deployment.bind(), name=app, route_prefix=route))

    async def each() -> dict[int, dict[str, float]]:
        return {n: await drive(handle.process, n, seconds) for n in callers}

    try:
        by_callers = asyncio.run(each())
        over_http = wrk(http + route, HTTP_CONNECTIONS, seconds) if http else None
        return by_callers, over_http
    finally:
        serve.delete(app)


HTTP_CONNECTIONS = 64
_WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"value": 1}'
wrk.headers["Content-Type"] = "application/json"
"""


def wrk(url: str, connections: int, seconds: float) -> dict[str, float] | None:
    """Requests/s and latency percentiles of ``wrk`` POSTing to ``url``;
    None when wrk is not installed or fails."""
    if shutil.which("wrk") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_WRK_SCRIPT)
        script.flush()
        command = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:g}s"]
        out = subprocess.run(
            [*command, "--latency", "-s", script.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rate is None:
        print(f"wrk gave no figures:\n{out}")
        return None
    figures = {"tasks_per_s": float(rate[1])}
    for name, pct in (("p50_ms", "50%"), ("p99_ms", "99%")):
        match = re.search(rf"^\s+{pct}\s+([\d.]+)(us|ms|s)$", out, re.M)
        scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
        figures[name] = float(match[1]) * scale[match[2]] if match else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    figures["errors"] = float(errors[1]) if errors else 0.0
    return figures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--callers", default="64,256", help="comma-separated caller counts")
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--report", default=str(FOLDER), help="folder for the report (ray.json)")
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
    http_rows: dict[str, dict[str, float]] = {}
    here = str(Path(__file__).resolve().parent)
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": here}},
    )
    try:
        from ray import serve

        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas in (1, 2):
            by_callers, over_http = with_ray(
                replicas, callers, args.seconds, f"http://127.0.0.1:{port}"
            )
            results[f"Ray Serve, {replicas} replica(s)"] = by_callers
            if over_http is not None:
                http_rows[f"Ray Serve HTTP, {replicas} replica(s)"] = over_http
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()

    lines = [
        f"Ray Serve, batched model emulator ({BATCH_COST * 1e3:g} ms + "
        f"{TASK_COST * 1e3:g} ms per task, batch {BATCH_SIZE}, one worker per "
        f"replica), closed-loop callers through FlowHandle, {os.cpu_count()} CPUs",
        f"{'setup':30} {'callers':>7} {'tasks/s':>10} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for name, by_callers in results.items():
        for n, figures in by_callers.items():
            lines.append(
                f"{name:30} {n:>7} {figures['tasks_per_s']:>10,.0f} "
                f"{figures['p50_ms']:>8.1f} {figures['p99_ms']:>8.1f}"
            )
    for name, figures in http_rows.items():
        lines.append(
            f"{name:30} {HTTP_CONNECTIONS:>7} {figures['tasks_per_s']:>10,.0f} "
            f"{figures['p50_ms']:>8.1f} {figures['p99_ms']:>8.1f}"
            + (f"  ({figures['errors']:.0f} errors)" if figures["errors"] else "")
        )
    if not http_rows:
        lines.append("(wrk is not installed: no HTTP figures)")
    for n in callers:
        one = results["Ray Serve, 1 replica(s)"][n]["tasks_per_s"]
        two = results["Ray Serve, 2 replica(s)"][n]["tasks_per_s"]
        lines.append(f"two replicas vs one, {n} callers: {two / one:.2f}x")
    report = Report("ray", "make bench")
    report.section("ray", lines)
    report.data = {"handle": results, "http": http_rows}
    report.write(Path(args.report))


if __name__ == "__main__":
    # run from the module, not __main__: replicas and workers import the
    # task and handler classes by name (this folder is on their PYTHONPATH)
    import ray_bench

    ray_bench.main()
