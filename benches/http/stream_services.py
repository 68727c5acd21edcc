"""The streaming benchmark's service — the decode emulator of
``benches/generative.py`` — on aqueduct's Rust front (continuous batching,
Server-Sent Events) or on mosec (its ``SSEWorker``, dynamic batching).

    python benches/http/stream_services.py --server aqueduct --port 8000
    .venv-mosec/bin/python benches/http/stream_services.py --server mosec --port 8000

A request is ``{"length": L}``; its stream is L events, one token each.
"""

from __future__ import annotations

import json
import sys
import time

ITERATION_S = 0.002
PER_SEQUENCE_S = 0.0001
BATCH = 64  # the continuous set: every one of 64 clients decodes at once
MOSEC_BATCH = 32  # mosec's dynamic batches (a batch streams until its longest is done)


def spin(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def aqueduct_main(port: int) -> None:
    import logging

    from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
    from aqueduct.http import Request, serve
    from aqueduct.logger import log

    class Generation(BaseTask):
        def __init__(self, length: int) -> None:
            super().__init__()
            self.length = length
            self.written = 0

    class Decoder(BaseTaskHandler):
        def handle(self, *active: Generation) -> None:  # type: ignore[override]
            spin(ITERATION_S + PER_SEQUENCE_S * len(active))
            for task in active:
                task.written += 1
                if not task.emit(str(task.written)) or task.written >= task.length:
                    task.finish()

    def generation(request: Request) -> Generation:
        return Generation(int(request.json()["length"]))

    log.setLevel(logging.WARNING)
    flow = Flow(FlowStep(Decoder(), batch_size=BATCH, batch_timeout=0.001, continuous=True))
    serve(
        flow,
        task_from_request=generation,
        response_from_task=lambda task: None,
        path="/inference",
        port=port,
        timeout=120,
        stream=True,
    )


def mosec_main() -> None:
    from mosec import Server, SSEWorker

    class Decoder(SSEWorker):
        def forward(self, data: list[dict]) -> list[str]:  # type: ignore[override]
            lengths = [int(d["length"]) for d in data]
            written = [0] * len(data)
            live = list(range(len(data)))
            while live:
                spin(ITERATION_S + PER_SEQUENCE_S * len(live))
                for i in live:
                    written[i] += 1
                    self.send_stream_event(str(written[i]), index=i)
                live = [i for i in live if written[i] < lengths[i]]
            return [json.dumps({"tokens": n}) for n in written]

    server = Server()
    server.append_worker(Decoder, max_batch_size=MOSEC_BATCH, max_wait_time=5)
    server.run()


if __name__ == "__main__":
    which = sys.argv[sys.argv.index("--server") + 1]
    del sys.argv[sys.argv.index("--server") : sys.argv.index("--server") + 2]
    if which == "aqueduct":
        aqueduct_main(int(sys.argv[sys.argv.index("--port") + 1]))
    else:
        mosec_main()  # reads --port and its other flags itself
