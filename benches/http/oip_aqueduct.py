"""The two HTTP benchmark services (``aqueduct_service.py``'s no-op and
model emulator) over the Open Inference Protocol from aqueduct's Rust
front: model ``bench``, input ``x`` and output ``y``, FP32 of any shape.

    python benches/http/oip_aqueduct.py --service noop --port 8000
"""

from __future__ import annotations

import argparse
import logging

from aqueduct.http import serve
from aqueduct.kserve import InferRequest, KServe, Model, Tensor
from aqueduct.logger import log
from aqueduct_service import JsonTask, build_flow


def task_from_request(request: InferRequest) -> JsonTask:
    return JsonTask(request.inputs["x"])


def outputs_from_task(task: JsonTask) -> dict[str, object]:
    return {"y": task.answer}


BENCH = Model(
    "bench",
    inputs=[Tensor("x", "FP32", (-1, -1))],
    outputs=[Tensor("y", "FP32", (-1, -1))],
    task_from_request=task_from_request,
    outputs_from_task=outputs_from_task,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--service", choices=["noop", "model"], default="noop")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    log.setLevel(logging.WARNING)
    serve(build_flow(args.service, 1), routes=KServe(BENCH).routes(), port=args.port, timeout=30)


if __name__ == "__main__":
    main()
