"""An aiohttp service wired with AppIntegrator: the flow starts with the app,
stops with it, /metrics serves Prometheus metrics, a full queue answers 503
and a timed-out task 504.

    python examples/aiohttp_app.py    # then: curl -d 1000 localhost:8080/sum
"""

from __future__ import annotations

from aiohttp import web
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.integrations.aiohttp import AppIntegrator


class SumTask(BaseTask):
    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number
        self.sum: int | None = None


class SumHandler(BaseTaskHandler):
    def handle(self, *tasks: SumTask) -> None:  # type: ignore[override]
        for task in tasks:
            task.sum = sum(i * i for i in range(task.number))


async def sum_view(request: web.Request) -> web.Response:
    task = SumTask(int(await request.read()))
    await request.app["flow"].process(task, timeout_sec=float(request.query.get("timeout", 5)))
    return web.json_response({"result": task.sum})


def build_flow(queue_size: int | None = None) -> Flow:
    """With a bounded queue, reject at once when it is full (a fast 503)."""
    if queue_size:
        return Flow(
            FlowStep(SumHandler(), batch_size=8), queue_size=queue_size, queue_full="reject"
        )
    return Flow(FlowStep(SumHandler(), batch_size=8))


def prepare_app(queue_size: int | None = None) -> web.Application:
    app = web.Application()
    AppIntegrator(app, map_errors=True).add_flow(build_flow(queue_size))
    app.router.add_post("/sum", sum_view)
    return app


if __name__ == "__main__":
    web.run_app(prepare_app())
