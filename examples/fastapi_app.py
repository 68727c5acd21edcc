"""A FastAPI service: the flow as a dependency, started and stopped with the
app's lifespan, /metrics for Prometheus, 503/504 for overload and timeouts.

    uvicorn examples.fastapi_app:app    # then: curl -d '{"number": 1000}' localhost:8000/sum
"""

from __future__ import annotations

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.integrations.fastapi import AppIntegrator, get_flow
from fastapi import Depends, FastAPI
from pydantic import BaseModel


class SumTask(BaseTask):
    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number
        self.sum: int | None = None


class SumHandler(BaseTaskHandler):
    def handle(self, *tasks: SumTask) -> None:  # type: ignore[override]
        for task in tasks:
            task.sum = sum(i * i for i in range(task.number))


class SumRequest(BaseModel):
    number: int
    timeout: float = 5.0


def create_app() -> FastAPI:
    app = FastAPI()
    AppIntegrator(app, map_errors=True).add_flow(Flow(FlowStep(SumHandler(), batch_size=8)))

    @app.post("/sum")
    async def sum_squares(body: SumRequest, flow: Flow = Depends(get_flow())) -> dict[str, int]:
        task = SumTask(body.number)
        await flow.process(task, timeout_sec=body.timeout)
        return {"result": task.sum or 0}

    return app


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(create_app())
