"""An embedding flow served over ``/v1/embeddings`` (aqueduct.openai), for
test_openai.py: run as a script, it prints the port it listens on, then
serves until SIGTERM. Each input's vector is ``[its length, the tasks in
its batch, its index in its request]`` padded with halves to DIMENSIONS;
``"boom"`` as an input raises, ``"wrong"`` answers too few rows."""

from __future__ import annotations

import os
import sys

import numpy as np
from aqueduct import BaseTaskHandler, Flow, FlowStep
from aqueduct.openai import Embedding, Embeddings
from support import serve_printing_port

DIMENSIONS = int(os.environ.get("DIMENSIONS", "8"))


class Counting(BaseTaskHandler):
    def handle(self, *tasks: Embedding) -> None:
        for task in tasks:
            if "boom" in task.inputs:
                raise ValueError("boom in the embedder")
            rows = np.full((len(task.inputs), DIMENSIONS), 0.5, dtype=np.float32)
            for i, text in enumerate(task.inputs):
                rows[i, :3] = (len(text), len(tasks), i)
            task.embeddings = rows[:-1] if "wrong" in task.inputs else rows


def main() -> None:
    flow = Flow(FlowStep(Counting(), batch_size=16, batch_timeout=0.05))
    serve_printing_port(flow, routes=Embeddings("embedder").routes())


if __name__ == "__main__":
    sys.exit(main())
