"""A flow served by aqueduct.http with a validated route, for
test_http_validation.py: prints its port, serves until SIGTERM."""

from __future__ import annotations

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.http import Request, Route, serve
from pydantic import BaseModel, Field


class Point(BaseModel):
    x: int
    y: int = 0
    tags: list[str] = Field(default_factory=list, max_length=3)


class Total(BaseModel):
    total: int


class Sum(BaseTask):
    def __init__(self, x: int, y: int) -> None:
        super().__init__()
        self.x, self.y = x, y
        self.total = 0


class Adder(BaseTaskHandler):
    def handle(self, *tasks: Sum) -> None:  # type: ignore[override]
        for task in tasks:
            task.total = task.x + task.y


def point_task(request: Request) -> Sum:
    point: Point = request.model  # validated before this runs
    return Sum(point.x, point.y)


def raw_task(request: Request) -> Sum:
    body = request.json()
    return Sum(int(body["x"]), 1)


def total(task: Sum) -> dict[str, int]:
    return {"total": task.total}


if __name__ == "__main__":
    serve(
        Flow(FlowStep(Adder())),
        routes={
            "/sum": Route(point_task, total, request_model=Point, response_model=Total),
            "/raw": (raw_task, total),
        },
        port=0,
        drain_delay=0,
        on_ready=lambda port: print("port", port, flush=True),
    )
