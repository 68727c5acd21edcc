"""``make bench-slo``: the model emulator on aqueduct's Rust HTTP front,
batching for the latency objective (``--mode objective``) or with
upstream's fixed wait of 5 ms (``--mode fixed``). ``POST /inference`` with
a JSON body answers it back.

    python benches/slo/aqueduct_front.py --mode objective --port 8000
"""

from __future__ import annotations

import argparse
import logging

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.http import Request, serve
from aqueduct.logger import log
from emulator import MAX_BATCH, OBJECTIVE_S, run_batch


class Item(BaseTask):
    def __init__(self, payload: object) -> None:
        super().__init__()
        self.payload = payload


class Model(BaseTaskHandler):
    def handle(self, *tasks: Item) -> None:  # type: ignore[override]
        run_batch(len(tasks))


def item(request: Request) -> Item:
    return Item(request.json())


def answer(task: Item) -> object:
    return task.payload


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["objective", "fixed"], default="objective")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    log.setLevel(logging.WARNING)
    if args.mode == "objective":
        step = FlowStep(Model(), batch_size=MAX_BATCH, latency_objective=OBJECTIVE_S)
    else:
        step = FlowStep(Model(), batch_size=MAX_BATCH, batch_timeout=0.005)
    serve(
        Flow(step),
        task_from_request=item,
        response_from_task=answer,
        port=args.port,
        path="/inference",
        timeout=30,
    )


if __name__ == "__main__":
    main()
