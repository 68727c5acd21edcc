"""The generative model behind the OpenAI-compatible API, from aqueduct's
Rust front — what the official ``openai`` client, its CLI and chat UIs
built on it talk to:

    python examples/generate/serve_openai.py     # or, from a shell:
    aqueduct serve --app-dir examples/generate --timeout 60 serve_openai:service

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    for chunk in client.chat.completions.create(
        model="char-model", messages=[{"role": "user", "content": "Beautiful is"}], stream=True
    ):
        print(chunk.choices[0].delta.content or "", end="", flush=True)

A token is a character; up to 32 sequences share each decoding iteration
(continuous batching), and a client that stops reading cancels its own.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aqueduct import Flow, FlowStep
from aqueduct.http import Service
from aqueduct.openai import ChatRequest, OpenAI, Result
from char_model import CharModel, Generation

MODEL = "char-model"


def generation(request: ChatRequest) -> Generation:
    """The chat's text (or the prompt) is what the model continues."""
    return Generation(request.prompt, request.max_tokens, request.seed)


def result(task: Generation) -> Result:
    written = task.text[len(task.prompt) :]
    reason = "length" if task.written >= task.max_tokens else "stop"
    return Result(written, reason, prompt_tokens=len(task.prompt), completion_tokens=task.written)


def service() -> Service:
    """What ``aqueduct serve serve_openai:service`` serves: /v1/chat/completions,
    /v1/completions and /v1/models."""
    flow = Flow(FlowStep(CharModel(), batch_size=32, continuous=True))
    api = OpenAI(MODEL, task_from_request=generation, response_from_task=result)
    return Service(flow, routes=api.routes())


if __name__ == "__main__":
    service().serve(
        port=int(os.environ.get("PORT", "8000")),
        timeout=60,
        on_ready=lambda port: print(f"listening on http://127.0.0.1:{port}/v1", flush=True),
    )
