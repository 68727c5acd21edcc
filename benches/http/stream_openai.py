"""The streaming benchmark's service over the OpenAI-compatible chat route
of aqueduct's Rust front (``aqueduct.openai``): the same continuous decoder
as ``stream_aqueduct.py``, each token a chat chunk.

    python benches/http/stream_openai.py --port 8000
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from aqueduct import Flow, FlowStep
from aqueduct.http import serve
from aqueduct.logger import log
from aqueduct.openai import ChatRequest, OpenAI, Result
from decode_emulator import BATCH

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from generative import ContinuousDecoder as Decoder
from generative import Generation


def generation(request: ChatRequest) -> Generation:
    return Generation(request.max_tokens)


def result(task: Generation) -> Result:
    return Result("", "length", prompt_tokens=1, completion_tokens=task.written)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    log.setLevel(logging.WARNING)
    flow = Flow(FlowStep(Decoder(), batch_size=BATCH, batch_timeout=0.001, continuous=True))
    api = OpenAI("emulator", generation, result, completions=False)
    serve(flow, routes=api.routes(), port=args.port, timeout=120, threads=args.threads)


if __name__ == "__main__":
    main()
