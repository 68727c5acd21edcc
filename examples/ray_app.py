"""Sums of squares served by Ray Serve: every replica owns a Flow.

On one machine (a local Ray starts by itself)::

    cd examples && serve run ray_app:app
    curl -d '{"number": 1000}' localhost:8000/sum

On a cluster, see "Scaling out with Ray Serve" in README.rst. Handlers and
tasks live in a module (this one) so every node can import them by name.
"""

from __future__ import annotations

import os

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.integrations.ray import flow_deployment
from starlette.requests import Request


class SumTask(BaseTask):
    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number
        self.sum: int | None = None
        self.worker_pid: int | None = None


class SumHandler(BaseTaskHandler):
    def handle(self, *tasks: SumTask) -> None:  # type: ignore[override]
        for task in tasks:
            task.sum = sum(i * i for i in range(task.number))
            task.worker_pid = os.getpid()


def build_flow() -> Flow:
    """Called in each replica: the Flow, its workers and its shared memory
    live on the replica's node."""
    return Flow(FlowStep(SumHandler(), batch_size=16, nprocs=1))


async def task_from_request(request: Request) -> SumTask:
    body = await request.json()
    return SumTask(int(body["number"]))


def response_from_task(task: SumTask) -> dict[str, int | None]:
    return {"sum": task.sum}


deployment = flow_deployment(
    build_flow,
    task_from_request=task_from_request,
    response_from_task=response_from_task,
    name="sum",
    num_replicas=int(os.environ.get("SUM_REPLICAS", 1)),
    ray_actor_options={"num_cpus": 1},
)
app = deployment.bind()
