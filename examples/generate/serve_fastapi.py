"""The generative model behind FastAPI, streaming Server-Sent Events:

uvicorn examples.generate.serve_fastapi:app
curl -N -d '{"prompt": "The ", "max_tokens": 300}' http://127.0.0.1:8000/generate
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from aqueduct import Flow, FlowStep
from aqueduct.integrations.fastapi import (
    AppIntegrator,
    get_flow,
    streaming_response,
)
from char_model import CharModel, Generation
from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel


class Prompt(BaseModel):
    prompt: str
    max_tokens: int = 200
    seed: int | None = None


def create_app() -> FastAPI:
    app = FastAPI()
    flow = Flow(FlowStep(CharModel(), batch_size=32, continuous=True))
    AppIntegrator(app).add_flow(flow)

    @app.post("/generate")
    async def generate(body: Prompt, flow: Flow = Depends(get_flow())) -> StreamingResponse:
        task = Generation(body.prompt, body.max_tokens, body.seed)
        return streaming_response(flow, task, timeout_sec=60)

    return app


app = create_app()
