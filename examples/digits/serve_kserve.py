"""The digits model over the Open Inference Protocol (KServe v2), from
aqueduct's Rust front — what ``tritonclient``, KServe and Triton's tools
talk to. The two steps of ``service.py`` (preprocessing, then the model)
batch requests together; each request is one 8x8 image.

    python examples/digits/serve_kserve.py       # or, from a shell:
    aqueduct serve --app-dir examples/digits serve_kserve:service

    import numpy as np, tritonclient.http as triton
    client = triton.InferenceServerClient("127.0.0.1:8000")
    image = triton.InferInput("image", [1, 64], "FP32")
    image.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
    print(client.infer("digits", [image]).as_numpy("digit"))
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from aqueduct.http import Service
from aqueduct.kserve import InferRequest, KServe, Model, Tensor
from service import DigitTask, build_flow


def task_from_request(request: InferRequest) -> DigitTask:
    return DigitTask(request.inputs["image"][0])


def outputs_from_task(task: DigitTask) -> dict[str, np.ndarray]:
    return {"digit": np.array([task.digit]), "confidence": np.array([task.confidence])}


DIGITS = Model(
    "digits",
    inputs=[Tensor("image", "FP32", (1, 64))],
    outputs=[Tensor("digit", "INT64", (1,)), Tensor("confidence", "FP32", (1,))],
    task_from_request=task_from_request,
    outputs_from_task=outputs_from_task,
)


def service() -> Service:
    """What ``aqueduct serve serve_kserve:service`` serves: /v2/... for the digits model."""
    return Service(build_flow(), routes=KServe(DIGITS).routes())


if __name__ == "__main__":
    service().serve(
        port=int(os.environ.get("PORT", "8000")),
        on_ready=lambda port: print(f"listening on 127.0.0.1:{port}", flush=True),
    )
