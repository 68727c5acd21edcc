"""A step with a latency objective behind the HTTP front, for
test_objective.py: run as a script, it prints the port it listens on, then
serves until SIGTERM. ``POST /predict`` with any body: a batched model
emulator costing 20 ms + 1 ms per task (batches of 8), objective 50 ms."""

from __future__ import annotations

import sys
import time

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.http import Request
from support import serve_printing_port


class Job(BaseTask):
    def __init__(self) -> None:
        super().__init__()
        self.batch = 0


class Slow(BaseTaskHandler):
    def handle(self, *tasks: Job) -> None:  # type: ignore[override]
        time.sleep(0.02 + 0.001 * len(tasks))
        for task in tasks:
            task.batch = len(tasks)


def job(_request: Request) -> Job:
    return Job()


def answer(task: Job) -> dict[str, int]:
    return {"batch": task.batch}


def main() -> None:
    flow = Flow(FlowStep(Slow(), batch_size=8, latency_objective=0.05))
    serve_printing_port(flow, task_from_request=job, response_from_task=answer)


if __name__ == "__main__":
    sys.exit(main())
