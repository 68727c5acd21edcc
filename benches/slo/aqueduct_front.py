"""``make bench-slo``: the model emulator on aqueduct's Rust HTTP front,
batching for the latency objective (``--mode objective``) or with
upstream's fixed wait of 5 ms (``--mode fixed``). ``POST /inference`` with
a JSON body answers it back.

    python benches/slo/aqueduct_front.py --mode objective --port 8000
"""

from __future__ import annotations

import argparse
import logging

from aqueduct import Flow
from aqueduct.http import Request, serve
from aqueduct.logger import log
from model import Item, Model, step


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
    serve(
        Flow(step(args.mode, Model())),
        task_from_request=item,
        response_from_task=answer,
        port=args.port,
        path="/inference",
        timeout=30,
    )


if __name__ == "__main__":
    main()
