"""The two HTTP benchmark services on Triton through PyTriton (its Python
backend, the dynamic batcher: batches of up to 32, 5 ms max queue delay):
model ``bench``, input ``x`` and output ``y``, FP32.

    LD_LIBRARY_PATH=<libpython3.x.so's dir> python benches/http/oip_pytriton.py --port 8000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


@batch
def noop(x: np.ndarray) -> dict[str, np.ndarray]:
    return {"y": x}


@batch
def model(x: np.ndarray) -> dict[str, np.ndarray]:
    time.sleep(0.002 + 0.0002 * len(x))  # the model emulator
    return {"y": x}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--service", choices=["noop", "model"], default="noop")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    config = TritonConfig(http_port=args.port, grpc_port=args.port + 1, metrics_port=args.port + 2)
    with Triton(config=config) as triton:
        triton.bind(
            model_name="bench",
            infer_func=noop if args.service == "noop" else model,
            inputs=[Tensor(name="x", dtype=np.float32, shape=(-1,))],
            outputs=[Tensor(name="y", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=32,
                batcher=DynamicBatcher(max_queue_delay_microseconds=5000),
            ),
        )
        triton.serve()


if __name__ == "__main__":
    main()
