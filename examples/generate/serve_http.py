"""The generative model served over HTTP by aqueduct's Rust front,
streaming Server-Sent Events (one per character) as it writes:

    python examples/generate/serve_http.py     # or, from a shell:
    aqueduct serve --app-dir examples/generate --timeout 60 serve_http:service
    curl -N -d '{"prompt": "The ", "max_tokens": 300}' http://127.0.0.1:8000/generate

Continuous batching: up to 32 sequences share each decoding iteration, a
new one joins the next iteration, and a finished one leaves at once. A
client that disconnects cancels its sequence.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aqueduct import Flow, FlowStep
from aqueduct.http import Request, Service
from char_model import CharModel, Generation


def build_flow() -> Flow:
    return Flow(FlowStep(CharModel(), batch_size=32, continuous=True))


def generation(request: Request) -> Generation:
    body = request.json()
    return Generation(str(body["prompt"]), int(body.get("max_tokens", 200)), body.get("seed"))


def done(task: Generation) -> dict[str, object]:
    return {"text": task.text, "tokens": task.written}


def service() -> Service:
    """What ``aqueduct serve serve_http:service`` serves: /generate streams."""
    return Service(
        build_flow(),
        task_from_request=generation,
        response_from_task=done,
        path="/generate",
        stream=True,
    )


if __name__ == "__main__":
    service().serve(
        port=int(os.environ.get("PORT", "8000")),
        timeout=60,
        on_ready=lambda port: print(f"listening on http://127.0.0.1:{port}/generate", flush=True),
    )
