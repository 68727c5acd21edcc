"""Checks an installed wheel (`make wheel-test`): imports aqueduct from
site-packages, not the source tree, and serves the README quick start."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aqueduct
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep


class Task(BaseTask):
    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number
        self.sum: int | None = None


class SumHandler(BaseTaskHandler):
    def handle(self, *tasks: Task) -> None:  # type: ignore[override]
        for task in tasks:
            task.sum = sum(i * i for i in range(task.number))


WHERE = Path(aqueduct.__file__).resolve()


async def main() -> None:
    where = WHERE
    assert "site-packages" in where.parts, f"aqueduct imported from {where}, not the wheel"
    flow = Flow(FlowStep(SumHandler(), batch_size=4))
    flow.start(timeout=60)
    tasks = [Task(n) for n in range(100)]
    await asyncio.wait_for(asyncio.gather(*(flow.process(t) for t in tasks)), 30)
    await flow.stop()
    assert [t.sum for t in tasks] == [sum(i * i for i in range(n)) for n in range(100)]
    print(f"wheel OK: aqueduct from {where.parent}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    asyncio.run(main())
