"""The streaming benchmark's service on aqueduct's Rust front: continuous
batching, one Server-Sent Event per token.

    python benches/http/stream_aqueduct.py --port 8000
"""

from __future__ import annotations

import argparse
import logging

from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.http import Request, serve
from aqueduct.logger import log
from decode_emulator import BATCH, iteration


class Generation(BaseTask):
    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length
        self.written = 0


class Decoder(BaseTaskHandler):
    def handle(self, *active: Generation) -> None:  # type: ignore[override]
        iteration(len(active))
        for task in active:
            task.written += 1
            if not task.emit(str(task.written)) or task.written >= task.length:
                task.finish()


def generation(request: Request) -> Generation:
    return Generation(int(request.json()["length"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    log.setLevel(logging.WARNING)
    flow = Flow(FlowStep(Decoder(), batch_size=BATCH, batch_timeout=0.001, continuous=True))
    serve(
        flow,
        task_from_request=generation,
        response_from_task=lambda task: None,
        path="/inference",
        port=args.port,
        timeout=120,
        stream=True,
        threads=args.threads,
    )


if __name__ == "__main__":
    main()
