"""A flow served by aqueduct's Rust HTTP front: no Python in the web process
per request. POST JSON ``{"values": [...]}`` to /predict; the first step
normalises the values, the second scores them in batches of up to 16.

    python examples/http_service.py            # or, from a shell:
    aqueduct serve --app-dir examples http_service:service
    curl -d '{"values": [1, 2, 3]}' localhost:8000/predict
"""

from __future__ import annotations

import os

import numpy as np
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.http import Request, Response, Service


class Scoring(BaseTask):
    def __init__(self, values: np.ndarray) -> None:
        super().__init__()
        self.values = values
        self.score: float | None = None


class Normalise(BaseTaskHandler):
    def handle(self, *tasks: Scoring) -> None:  # type: ignore[override]
        for task in tasks:
            spread = float(task.values.std()) or 1.0
            task.values = (task.values - task.values.mean()) / spread


class Model(BaseTaskHandler):
    def on_start(self) -> None:
        self.weights = np.linspace(-1.0, 1.0, 1024)

    def handle(self, *tasks: Scoring) -> None:  # type: ignore[override]
        for task in tasks:  # one batch: a real model would stack them
            n = min(len(task.values), len(self.weights))
            task.score = float(task.values[:n] @ self.weights[:n])


def task_from_request(request: Request) -> Scoring:
    """Runs in a worker of the first step: raising answers 400."""
    values = np.asarray(request.json()["values"], dtype=np.float64)
    if values.ndim != 1 or not len(values):
        raise ValueError("values must be a non-empty list of numbers")
    return Scoring(values)


def response_from_task(task: Scoring) -> object:
    """Runs in the worker that finished the task: a dict is sent as JSON."""
    if task.score is None:
        return Response({"error": "not scored", "type": "NotScored"}, status=500)
    return {"score": task.score}


def service() -> Service:
    """The flow and its ends: what ``aqueduct serve http_service:service`` serves."""
    flow = Flow(
        FlowStep(Normalise()),
        FlowStep(Model(), batch_size=16, batch_timeout=0.002),
    )
    return Service(flow, task_from_request=task_from_request, response_from_task=response_from_task)


if __name__ == "__main__":
    service().serve(
        port=int(os.environ.get("PORT", "8000")),
        on_ready=lambda port: print(f"listening on {port}", flush=True),
    )
