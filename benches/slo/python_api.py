"""``make bench-slo``, its Python API stage: open-loop load on a flow in the
caller's own process, the way a web server loads it — a new asyncio task
per request, sent at its Poisson arrival time whether or not earlier ones
were answered, its latency measured from that scheduled time (the caller's
event loop falling behind counts against the flow). The task class lives in
``__main__``. Runs on this package or, in upstream's venv, on aqueduct 1.15.

    python benches/slo/python_api.py --mode objective --rates 1000,2000 --seconds 4

Prints one JSON object per rate (the same fields as ``openloop``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aqueduct import BaseTask, BaseTaskHandler, Flow
from aqueduct.logger import log
from emulator import OBJECTIVE_S, run_batch
from model import step

try:
    from aqueduct.exceptions import OverloadedError
except ImportError:  # upstream 1.15 refuses nothing

    class OverloadedError(Exception):  # type: ignore[no-redef]
        pass


class Item(BaseTask):
    def __init__(self) -> None:
        super().__init__()


class Model(BaseTaskHandler):
    def handle(self, *tasks: Item) -> None:  # type: ignore[override]
        run_batch(len(tasks))


def percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(
        ordered[max(0, min(len(ordered), -(-int(len(ordered) * q * 1000) // 1000)) - 1)] * 1e3, 3
    )


async def one(flow: Flow, due: float) -> tuple[str, float]:
    loop = asyncio.get_running_loop()
    try:
        done = await flow.process(Item(), timeout_sec=10)
    except OverloadedError:
        return "rejected", loop.time() - due
    except Exception:
        return "failed", loop.time() - due
    return ("answered" if done is not False else "failed"), loop.time() - due


async def point(
    flow: Flow, rate: float, seconds: float, warmup: float, seed: int
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    start = loop.time()
    end = warmup + seconds
    due = rng.expovariate(rate)
    calls: list[tuple[float, asyncio.Task[tuple[str, float]]]] = []
    lag = 0.0
    while due < end:
        now = loop.time() - start
        if due > now:
            await asyncio.sleep(due - now)
            now = loop.time() - start
        while due <= now and due < end:
            if due >= warmup:
                lag = max(lag, now - due)
            calls.append((due, asyncio.ensure_future(one(flow, start + due))))
            due += rng.expovariate(rate)
    outcomes = [(d, await task) for d, task in calls]
    measured = [o for d, o in outcomes if d >= warmup]
    answered = sorted(t for what, t in measured if what == "answered")
    rejected = sorted(t for what, t in measured if what == "rejected")
    within = sum(t <= OBJECTIVE_S for t in answered)
    sent = len(measured)
    return {
        "rate": rate,
        "window_s": seconds,
        "sent": sent,
        "answered": len(answered),
        "within": within,
        "late": len(answered) - within,
        "rejected": len(rejected),
        "failed": sent - len(answered) - len(rejected),
        "goodput": round(within / seconds, 1),
        "within_share": round(within / max(1, sent), 5),
        "p50_ms": percentile(answered, 0.5),
        "p99_ms": percentile(answered, 0.99),
        "p999_ms": percentile(answered, 0.999),
        "reject_p99_ms": percentile(rejected, 0.99),
        "max_lag_ms": round(lag * 1e3, 3),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["objective", "fixed"], default="fixed")
    parser.add_argument("--rates", required=True, help="comma-separated requests/s")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    log.setLevel(logging.WARNING)
    flow = Flow(step(args.mode, Model()), metrics_enabled=False)
    started = flow.start()
    if asyncio.iscoroutine(started):
        await started
    try:
        # it learns its batches' cost (and the workers warm)
        await point(flow, 500.0, 1.5, 0.0, 99)
        for seed, rate in enumerate(float(r) for r in args.rates.split(",")):
            print(
                json.dumps(await point(flow, rate, args.seconds, args.warmup, seed + 1)), flush=True
            )
            await asyncio.sleep(0.5)
    finally:
        stopped = flow.stop()
        if asyncio.iscoroutine(stopped):
            await stopped


if __name__ == "__main__":
    asyncio.run(main())
