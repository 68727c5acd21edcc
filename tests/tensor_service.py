"""Two models served over the Open Inference Protocol (aqueduct.kserve),
for test_kserve.py: run as a script, it prints the port it listens on, then
serves until SIGTERM.

``echo`` (step Echo) takes an input of every datatype and answers each one
back as the output of the same name, and in ``where`` the class holding the
bytes of its FP32 input (shared memory, or a bytes object for a small
request); ``sum`` (step Summer, its own step) answers the row sums of
``x`` and the pid of the worker, or raises when ``x`` holds -1."""

from __future__ import annotations

import os
import sys

import numpy as np
from aqueduct import BaseTaskHandler, Flow, FlowStep
from aqueduct.kserve import DATATYPES, Inference, KServe, Model, Tensor
from support import serve_printing_port

ECHOED = [Tensor(d.lower(), d, (-1, -1)) for d in DATATYPES]


class Echo(BaseTaskHandler):
    def handle(self, *tasks: Inference) -> None:
        for task in tasks:
            if task.model != "echo":
                continue
            task.outputs = dict(task.inputs)
            base = task.inputs["fp32"]
            while isinstance(base, np.ndarray):
                base = base.base  # down to what holds the bytes
            if isinstance(base, memoryview):
                base = base.obj
            task.outputs["where"] = [type(base).__name__]
            task.outputs["batch"] = np.array([len(tasks)], dtype=np.int32)


class Summer(BaseTaskHandler):
    def handle(self, *tasks: Inference) -> None:
        for task in tasks:
            x = task.inputs["x"]
            if (x == -1).any():
                raise ValueError("-1 is not summed")
            task.outputs = {"sum": x.sum(axis=1), "pid": np.array([os.getpid()])}


def is_echo(task: Inference) -> bool:
    return task.model == "echo"


def is_sum(task: Inference) -> bool:
    return task.model == "sum"


ECHO = Model(
    "echo",
    inputs=ECHOED,
    outputs=[*ECHOED, Tensor("where", "BYTES", (1,)), Tensor("batch", "INT32", (1,))],
    steps=["step1_Echo"],
)
SUM = Model(
    "sum",
    inputs=[Tensor("x", "FP64", (-1, 3))],
    outputs=[Tensor("sum", "FP64", (-1,)), Tensor("pid", "INT64", (1,))],
    version="2",
    steps=[1],
)


def main() -> None:
    flow = Flow(
        FlowStep(Echo(), handle_condition=is_echo, batch_size=8, batch_timeout=0.02),
        FlowStep(Summer(), handle_condition=is_sum),
        queue_priorities=4,
    )
    serve_printing_port(flow, routes=KServe(ECHO, SUM).routes())


if __name__ == "__main__":
    sys.exit(main())
