"""The streaming benchmark's service on aqueduct's Rust front: continuous
batching, one Server-Sent Event per token.

    python benches/http/stream_aqueduct.py --port 8000
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aqueduct import Flow, FlowStep
from aqueduct.http import Request, serve
from aqueduct.logger import log
from decode_emulator import BATCH

# the same task and continuous decoder as the in-process benchmark
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from generative import ContinuousDecoder as Decoder
from generative import Generation


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
