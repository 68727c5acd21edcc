"""`make soak`: a million tasks through a 2-step flow; reports how the RSS and
open fds of the parent and every worker moved between the end of a warm-up
and the end of the run. Goal: RSS grows < 10 %, fds constant."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aqueduct import Flow, FlowStep
from aqueduct.logger import log
from web_workloads import children
from workloads import NoopHandler, NoopTask

TOTAL = int(os.environ.get("SOAK_TASKS", "1000000"))
WARMUP = TOTAL // 10
CALLERS = 32


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sample(pids: list[int]) -> dict[int, tuple[int, int]]:
    return {pid: (rss_kb(pid), fds(pid)) for pid in pids}


async def run(flow: Flow, count: int) -> int:
    errors = 0

    async def caller(n: int) -> None:
        nonlocal errors
        for i in range(n):
            try:
                await flow.process(NoopTask(i), timeout_sec=30)
            except Exception:
                errors += 1

    await asyncio.gather(*(caller(count // CALLERS) for _ in range(CALLERS)))
    return errors


async def main() -> None:
    log.setLevel(logging.WARNING)
    flow = Flow(FlowStep(NoopHandler()), FlowStep(NoopHandler(), batch_size=8))
    flow.start(timeout=60)
    pids = [os.getpid(), *children(os.getpid())]
    errors = await run(flow, WARMUP)
    before = sample(pids)
    started = time.perf_counter()
    errors += await run(flow, TOTAL - WARMUP)
    elapsed = time.perf_counter() - started
    after = sample(pids)
    await flow.stop()
    print(
        f"soak: {TOTAL:,} tasks ({TOTAL - WARMUP:,} measured in {elapsed:.1f} s), {errors} errors"
    )
    worst = 0.0
    for pid in pids:
        (rss0, fd0), (rss1, fd1) = before[pid], after[pid]
        growth = (rss1 - rss0) / rss0 * 100
        worst = max(worst, growth)
        role = "parent" if pid == os.getpid() else "worker"
        print(
            f"  {role:<7} {pid:>7}: RSS {rss0 / 1024:7.1f} -> {rss1 / 1024:7.1f} MiB "
            f"({growth:+5.1f} %), fds {fd0} -> {fd1}"
        )
    fds_constant = all(before[p][1] == after[p][1] for p in pids)
    print(f"worst RSS growth {worst:+.1f} % (goal < 10 %), fds constant: {fds_constant}")


if __name__ == "__main__":
    asyncio.run(main())
