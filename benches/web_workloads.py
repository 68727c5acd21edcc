"""Web-shaped benchmark workloads: the load a web server puts on a Flow.

Every call is a new asyncio task (as a server makes one per request), made
by one of ``callers`` connection loops that each send their next request
when the last is answered (a keep-alive connection's shape), and the task and
handler classes live in the script's ``__main__`` (this file run as a
script), as they often do in users' services. (Calls gathered at once behind
an ``asyncio.Semaphore`` would measure CPython's semaphore instead: it walks
every woken waiter on each release, so its cost grows with the burst of
answers a drain delivers — 10 µs a call more at 1,024 callers than at 32,
with no flow at all.) Written against the public API
shared by this package and upstream aqueduct 1.15, so the same file measures
both. CPU time is reported per task, for the caller's process (total and
beyond the bare harness: the same gather with a stand-in for
``flow.process``) and for all worker processes together.

    python web_workloads.py WORKLOAD [SCALE]

prints one JSON object. ``web_main_vs_module`` runs the same flow with these
classes from ``__main__`` and from this file imported as a module.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep

CALLERS = 32
#: The batched model emulator: CPU time per batch and per task of the batch.
MODEL_BATCH_S = 0.002
MODEL_TASK_S = 0.0002
MODEL_BATCH_SIZE = 32
MODEL_CALLERS = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")


class NoopTask(BaseTask):
    def __init__(self, value: int = 0) -> None:
        super().__init__()
        self.value = value
        self.result: int | None = None


class NoopHandler(BaseTaskHandler):
    def handle(self, *tasks: NoopTask) -> None:  # type: ignore[override]
        for task in tasks:
            task.result = task.value


class ModelTask(NoopTask):
    def __init__(self, value: int = 0) -> None:
        super().__init__(value)
        self.batch = 0


class CpuModel(BaseTaskHandler):
    """Keeps a core busy like a batched model: MODEL_BATCH_S + MODEL_TASK_S a
    task (of wall-clock time: the clock read is the vDSO's, no system call)."""

    def handle(self, *tasks: ModelTask) -> None:  # type: ignore[override]
        until = time.perf_counter() + MODEL_BATCH_S + MODEL_TASK_S * len(tasks)
        while time.perf_counter() < until:
            pass
        for task in tasks:
            task.result = task.value
            task.batch = len(tasks)


class PlainRequest:
    """What the bare harness builds per call: a plain object, no BaseTask."""

    def __init__(self, value: int) -> None:
        self.value = value
        self.result: int | None = None


# -- CPU accounting --------------------------------------------------------


def children(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cpu_s(pid: int) -> float:
    """CPU seconds of process ``pid``: its main thread's time on a CPU from
    /proc/<pid>/schedstat (nanoseconds; workers do their work there), else
    user + system time of all its threads from /proc/<pid>/stat (ticks)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class CpuMeter:
    """CPU used by this process and by its descendants between start and stop."""

    def start(self) -> None:
        self._workers = children(os.getpid())
        self._worker_cpu = sum(_cpu_s(p) for p in self._workers)
        self._self_cpu = time.process_time()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        own = time.process_time() - self._self_cpu
        workers = sum(_cpu_s(p) for p in self._workers) - self._worker_cpu
        return {"wall_s": wall, "caller_cpu_s": own, "worker_cpu_s": workers}


# -- the harness -----------------------------------------------------------


async def _fake_process(task: Any, timeout_sec: float = 5.0) -> bool:
    await asyncio.sleep(0)  # a real call suspends at least once
    task.result = task.value
    return True


async def gather_calls(
    process: Callable[..., Awaitable[Any]],
    make: Callable[[int], Any],
    calls: int,
    callers: int,
) -> tuple[list[Any], int]:
    """``calls`` calls of ``process``, each in a new asyncio task, from
    ``callers`` connection loops (each one call at a time); returns the
    finished tasks, in call order, and the error count."""
    errors = 0
    done: list[Any] = [None] * calls
    numbers = iter(range(calls))

    async def call(i: int) -> None:
        nonlocal errors
        task = make(i)
        try:
            await process(task, timeout_sec=30)
        except Exception:
            errors += 1
        done[i] = task

    async def connection() -> None:
        for i in numbers:
            await asyncio.create_task(call(i))

    await asyncio.gather(*(connection() for _ in range(min(callers, calls))))
    return done, errors


async def measure(
    process: Callable[..., Awaitable[Any]],
    make: Callable[[int], Any],
    calls: int,
    callers: int,
) -> tuple[dict[str, float], list[Any]]:
    """A warm-up tenth, then ``calls`` measured calls: rate and CPU per call."""
    await gather_calls(process, make, max(calls // 10, callers), callers)
    meter = CpuMeter()
    meter.start()
    done, errors = await gather_calls(process, make, calls, callers)
    used = meter.stop()
    wrong = sum(1 for i, t in enumerate(done) if t.result != i)
    out = {
        "tasks_per_s": calls / used["wall_s"],
        "caller_cpu_us": used["caller_cpu_s"] / calls * 1e6,
        "worker_cpu_us": used["worker_cpu_s"] / calls * 1e6,
        "errors": float(errors),
        "wrong": float(wrong - errors),
    }
    return out, done


#: The bare harness and the flow are measured in this many alternating
#: rounds, so a machine whose speed drifts during the run (a shared VM)
#: affects both alike.
ROUNDS = 4
SIDE_BY_SIDE_ROUNDS = 20


async def with_harness(flow: Flow, make: Callable[[int], Any], calls: int, callers: int) -> dict:
    """The flow's figures plus the bare harness's caller CPU, and the caller
    CPU beyond it (what ``process`` itself costs the web process)."""
    bare: list[dict[str, float]] = []
    real: list[dict[str, float]] = []
    for _ in range(ROUNDS):
        bare.append((await measure(_fake_process, PlainRequest, calls // ROUNDS, callers))[0])
        real.append((await measure(flow.process, make, calls // ROUNDS, callers))[0])
    out = {
        "tasks_per_s": len(real) / sum(1 / r["tasks_per_s"] for r in real),
        "caller_cpu_us": _mean(real, "caller_cpu_us"),
        "worker_cpu_us": _mean(real, "worker_cpu_us"),
        "errors": sum(r["errors"] for r in real),
        "wrong": sum(r["wrong"] for r in real),
        "harness_cpu_us": _mean(bare, "caller_cpu_us"),
    }
    out["caller_beyond_harness_us"] = out["caller_cpu_us"] - out["harness_cpu_us"]
    return out


def _mean(runs: list[dict[str, float]], key: str) -> float:
    return sum(r[key] for r in runs) / len(runs)


async def latency(flow: Flow, make: Callable[[int], Any], calls: int) -> dict[str, float]:
    """One caller; every call a new asyncio task, timed inside it."""
    samples: list[float] = []

    async def call(i: int) -> None:
        task = make(i)
        started = time.perf_counter()
        await flow.process(task, timeout_sec=30)
        samples.append(time.perf_counter() - started)

    for i in range(200):  # warm-up
        await asyncio.create_task(call(i))
    samples.clear()
    for i in range(calls):
        await asyncio.create_task(call(i))
    samples.sort()
    return {
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[int(len(samples) * 0.99)] * 1e6,
    }


async def batch_fill(flow: Flow, make: Callable[[int], Any], calls: int) -> dict[str, float]:
    """The model emulator under MODEL_CALLERS callers: throughput against the
    ideal of full batches back to back, and the mean batch size. The fill
    counts from the first call's start (gather making its tasks first is
    the harness's time, not the flow's) to the last call's end."""
    first: list[float] = []

    async def timed(task: Any, timeout_sec: float = 5.0) -> bool:
        if not first:
            first.append(time.perf_counter())
        return await flow.process(task, timeout_sec=timeout_sec)

    await gather_calls(flow.process, make, calls // 10, MODEL_CALLERS)  # warm-up
    meter = CpuMeter()
    meter.start()
    done, errors = await gather_calls(timed, make, calls, MODEL_CALLERS)
    flowing = time.perf_counter() - first[0]
    used = meter.stop()
    figures = {
        "tasks_per_s": calls / used["wall_s"],
        "caller_cpu_us": used["caller_cpu_s"] / calls * 1e6,
        "worker_cpu_us": used["worker_cpu_s"] / calls * 1e6,
        "errors": float(errors),
    }
    batches = sum(1 / t.batch for t in done if t.batch)
    ideal = MODEL_BATCH_SIZE / (MODEL_BATCH_S + MODEL_TASK_S * MODEL_BATCH_SIZE)
    figures["mean_batch"] = len(done) / batches if batches else 0.0
    figures["fill"] = calls / flowing / ideal
    return figures


#: A variant of a flow to compare: its label, and how to make the flow and its tasks.
Variant = tuple[str, Callable[[], Flow], Callable[[int], Any]]


async def side_by_side(variants: list[Variant], calls: int) -> dict[str, float]:
    """Two variants of a flow measured in one process in short alternating
    rounds, so only a machine whose speed drifts tells them apart, and twice:
    once with each flow started first (the flow started second runs a few %
    faster here). ``gap`` is the first's throughput over the second's, - 1."""
    rounds: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in variants}
    for order in (variants, variants[::-1]):
        started: list[tuple[str, Flow, Callable[[int], Any]]] = []
        try:
            for label, make_flow, make_task in order:
                flow = make_flow()
                started.append((label, flow, make_task))
                flow.start()
            for turn in range(SIDE_BY_SIDE_ROUNDS // 2):
                for label, flow, make in started if turn % 2 == 0 else started[::-1]:
                    size = calls // SIDE_BY_SIDE_ROUNDS
                    figures, _ = await measure(flow.process, make, size, CALLERS)
                    rounds[label].append(figures)
        finally:
            for _label, flow, _make in started:
                await flow.stop(graceful=False)
    result: dict[str, float] = {}
    for label, runs in rounds.items():
        result[f"{label}_tasks_per_s"] = len(runs) / sum(1 / r["tasks_per_s"] for r in runs)
        result[f"{label}_caller_cpu_us"] = _mean(runs, "caller_cpu_us")
        result[f"{label}_worker_cpu_us"] = _mean(runs, "worker_cpu_us")
    first, second = (label for label, *_ in variants)
    result["gap"] = result[f"{first}_tasks_per_s"] / result[f"{second}_tasks_per_s"] - 1
    return result


def main_vs_module() -> list[Variant]:
    """The task and handler classes of ``__main__`` against the same classes
    imported from a module (they differ in nothing but names)."""
    import web_workloads as module

    main = sys.modules[__name__]
    return [
        ("main", lambda: Flow(FlowStep(main.NoopHandler())), main.NoopTask),
        ("module", lambda: Flow(FlowStep(module.NoopHandler())), module.NoopTask),
    ]


def metrics_on_off() -> list[Variant]:
    """The same flow with metrics (the default) and without."""
    return [
        ("on", lambda: Flow(FlowStep(NoopHandler())), NoopTask),
        ("off", lambda: Flow(FlowStep(NoopHandler()), metrics_enabled=False), NoopTask),
    ]


def _quiet() -> None:
    import logging

    from aqueduct.logger import log

    log.setLevel(logging.WARNING)


async def run(name: str, scale: float) -> dict[str, float]:
    """Runs workload ``name`` with the classes of ``__main__`` (this file)."""
    classes = sys.modules[__name__]
    _quiet()
    noop = FlowStep(classes.NoopHandler())
    calls = int(20_000 * scale)
    if name == "web_main_vs_module":
        return await side_by_side(main_vs_module(), 2 * calls)
    if name == "web_metrics":
        return await side_by_side(metrics_on_off(), 2 * calls)
    if name == "web_latency":
        flow = Flow(noop)
    elif name in ("web_1step", "web_overload_1024"):
        flow = Flow(noop)
    elif name == "web_3step":
        flow = Flow(noop, FlowStep(classes.NoopHandler()), FlowStep(classes.NoopHandler()))
    elif name == "web_batch32":
        flow = Flow(FlowStep(classes.NoopHandler(), batch_size=32))
    elif name == "web_batch_fill":
        flow = Flow(FlowStep(classes.CpuModel(), batch_size=MODEL_BATCH_SIZE))
    else:
        raise SystemExit(f"unknown workload {name}")
    flow.start()
    try:
        if name == "web_latency":
            return await latency(flow, classes.NoopTask, int(5000 * scale))
        if name == "web_batch_fill":
            return await batch_fill(flow, classes.ModelTask, calls)
        callers = 1024 if name == "web_overload_1024" else CALLERS
        return await with_harness(flow, classes.NoopTask, calls, callers)
    finally:
        await flow.stop(graceful=False)


def main() -> None:
    name = sys.argv[1]
    scale = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
    print(json.dumps(asyncio.run(run(name, scale))))


if __name__ == "__main__":
    main()
