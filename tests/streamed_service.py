"""A streaming flow served by aqueduct.http, for test_http_stream.py: run
as a script, it prints the port it listens on, then serves until SIGTERM.
``/generate`` streams Server-Sent Events; ``/lines`` streams raw lines;
``/blobs`` (with BLOBS set) streams big parts as they are."""

from __future__ import annotations

import os
import sys

from aqueduct import Flow, FlowStep
from aqueduct.http import Request, serve
from generators import Blobs, Counter, Decoder, Prompt


def prompt(request: Request) -> Prompt:
    data = request.json()
    return Prompt(data["name"], int(data["length"]), data.get("log"))


def final(task: Prompt) -> object:
    return {"text": task.text}


def line(part: str) -> bytes:
    return f"{part}\n".encode()


def raw(part: object) -> object:
    return part  # bytes, or a numpy array: written as they are


def main() -> None:
    if os.environ.get("BLOBS"):
        step = FlowStep(Blobs())
    elif os.environ.get("CONTINUOUS"):
        step = FlowStep(Decoder(iteration=0.005), batch_size=8, continuous=True)
    else:
        step = FlowStep(Counter(delay=0.01), batch_size=4, batch_timeout=0.02)
    serve(
        Flow(step, shm_size=int(os.environ.get("SHM_SIZE", str(1 << 30)))),
        routes={
            "/generate": (prompt, final, True),
            "/lines": (prompt, lambda task: None, line),
            "/blobs": (prompt, lambda task: None, raw),
        },
        port=0,
        timeout=float(os.environ.get("TIMEOUT", "10")),
        header_timeout=float(os.environ.get("HEADER_TIMEOUT", "10")),
        drain_delay=0,
        graceful_timeout=float(os.environ.get("GRACEFUL_TIMEOUT", "25")),
        on_ready=lambda port: print("port", port, flush=True),
    )


if __name__ == "__main__":
    sys.exit(main())
