"""The model emulator as an aqueduct step, for the services of ``make
bench-slo`` that run on aqueduct (this package or upstream 1.15): its task,
its handler, and its step batching for the objective or with a fixed wait."""

from __future__ import annotations

from aqueduct import BaseTask, BaseTaskHandler, FlowStep
from emulator import MAX_BATCH, OBJECTIVE_S, run_batch


class Item(BaseTask):
    def __init__(self, payload: object = None) -> None:
        super().__init__()
        self.payload = payload


class Model(BaseTaskHandler):
    def handle(self, *tasks: BaseTask) -> None:  # type: ignore[override]
        run_batch(len(tasks))


def step(mode: str, handler: BaseTaskHandler) -> FlowStep:
    """``handler``'s step: batches of 32 for the objective (``objective``),
    or with upstream's fixed 5 ms wait (``fixed``, all upstream has)."""
    if mode == "objective":
        return FlowStep(handler, batch_size=MAX_BATCH, latency_objective=OBJECTIVE_S)
    return FlowStep(handler, batch_size=MAX_BATCH, batch_timeout=0.005)
