"""A flow served by aqueduct.http, for test_http.py: run as a script, it
prints the port it listens on, then serves until SIGTERM. (Named apart from
examples/http_service.py, which is on sys.path in some tests.)"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.http import Request, Response, serve


class Job(BaseTask):
    def __init__(self, x: object, sleep: float = 0.0, reached: str | None = None) -> None:
        super().__init__()
        self.x = x
        self.sleep = sleep
        self.reached = reached
        self.y: object = None
        self.steps: list[str] = []
        self.batch = 0


class Double(BaseTaskHandler):
    """Doubles ``x``; ``"boom"`` raises, ``"die"`` kills the worker; touches
    the file ``reached`` names, then sleeps ``sleep``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def handle(self, *tasks: Job) -> None:
        for task in tasks:
            if task.reached:
                Path(task.reached).touch()
        time.sleep(max(t.sleep for t in tasks))
        for task in tasks:
            if isinstance(task.x, str) and task.x == "boom":
                raise ValueError("boom!")
            if isinstance(task.x, str) and task.x == "scribble":
                from support import scribble  # what a buggy native extension does

                scribble(seed=11, names=("aqueduct-queue",), skip=64)
            if isinstance(task.x, str) and task.x == "scribble arenas":
                from support import scribble

                # the block tables of every arena, the server's among them
                scribble(seed=12, names=("aqueduct-arena",), span=4096)
            if isinstance(task.x, str) and task.x == "die":
                os._exit(9)
            value = task.x if task.y is None else task.y
            doubles = isinstance(value, int | float | np.ndarray)
            task.y = value * 2 if doubles else value
            task.steps.append(self.name)
            task.batch = max(task.batch, len(tasks))


def task_from_request(request: Request) -> Job:
    if request.method != "POST":
        raise ValueError(f"POST only, not {request.method}")
    if request.headers.get("content-type") == "application/octet-stream":
        return Job(len(request.body))
    if request.headers.get("content-type") == "application/x-array":
        return Job(np.frombuffer(request.body, dtype=np.uint8).astype(np.int64))
    data = request.json()
    return Job(data["x"], sleep=float(data.get("sleep", 0)), reached=data.get("reached"))


_BIG_ANSWERS: dict[int, bytes] = {}


def _big_answer(size: int) -> bytes:
    # made once: what is measured is the answer's way out
    if size not in _BIG_ANSWERS:
        _BIG_ANSWERS[size] = b"x" * size
    return _BIG_ANSWERS[size]


def response_from_task(task: Job) -> object:
    if isinstance(task.x, str) and task.x == "empty":
        return Response(b"", status=404)
    if isinstance(task.x, str) and task.x == "cookies":
        return Response(b"", headers=[("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    if isinstance(task.x, str) and task.x == "no such status":
        return Response(b"", status=1000)
    if isinstance(task.x, str) and task.x == "big answer":
        return Response(_big_answer(int(os.environ.get("BIG_ANSWER", str(32 << 20)))))
    if isinstance(task.x, str) and task.x == "array answer":
        return np.arange(int(os.environ.get("BIG_ANSWER", str(1 << 20))), dtype=np.int64)
    if isinstance(task.x, str) and task.x == "request id":
        return {"request_id": task.request_id}
    if isinstance(task.x, str) and task.x == "teapot":
        return Response(b"short and stout", status=418, headers={"X-Pot": "tea"})
    y = int(task.y.sum()) if isinstance(task.y, np.ndarray) else task.y
    answer = {"y": y, "steps": task.steps, "batch": task.batch}
    if "GENERATION" in os.environ:  # which of two versions answered
        answer["generation"] = os.environ["GENERATION"]
    return answer


def echo_request(request: Request) -> Job:
    return Job(request.body.decode())


def echo_response(task: Job) -> object:
    return {"echo": task.y, "route": "echo"}


def trace_to(path: str) -> None:
    """The spans this process ends, as JSON lines in ``path``."""
    import json

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class ToFile(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            with open(path, "a") as out:
                for span in spans:
                    line = {
                        "name": span.name,
                        "trace_id": f"{span.context.trace_id:032x}",
                        "span_id": f"{span.context.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "start": span.start_time,
                        "end": span.end_time,
                        "attributes": dict(span.attributes or {}),
                    }
                    out.write(json.dumps(line) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ToFile()))
    trace.set_tracer_provider(provider)


def main() -> None:
    batch = int(os.environ.get("BATCH", "1"))
    if "TRACE_FILE" in os.environ:
        trace_to(os.environ["TRACE_FILE"])
    flow = Flow(
        FlowStep(Double("a"), batch_size=batch, batch_timeout=0.01 if batch > 1 else 0),
        FlowStep(
            Double("b"), handle_condition=lambda task: not (isinstance(task.x, int) and task.x == 0)
        ),
        queue_size=int(os.environ["QUEUE_SIZE"]) if "QUEUE_SIZE" in os.environ else None,
        queue_full="reject",
        queue_priorities=int(os.environ.get("PRIORITIES", "1")),
        tracing="TRACE_FILE" in os.environ,
    )
    ends: dict[str, object] = {
        "task_from_request": task_from_request,
        "response_from_task": response_from_task,
    }
    if os.environ.get("ROUTES"):
        both = (task_from_request, response_from_task)
        ends = {"routes": {"/double": both, "/echo": (echo_request, echo_response)}}
    serve(
        flow,
        **ends,  # type: ignore[arg-type]
        port=int(os.environ.get("PORT", "0")),
        timeout=float(os.environ.get("TIMEOUT", "5")),
        body_limit=int(os.environ.get("BODY_LIMIT", str(16 << 20))),
        header_timeout=float(os.environ.get("HEADER_TIMEOUT", "10")),
        max_connections=int(os.environ.get("MAX_CONNECTIONS", "10000")),
        body_timeout=float(os.environ.get("BODY_TIMEOUT", "30")),
        idle_timeout=float(os.environ.get("IDLE_TIMEOUT", "30")),
        write_timeout=float(os.environ.get("WRITE_TIMEOUT", "30")),
        access_log=os.environ.get("ACCESS_LOG"),
        open_metrics=os.environ.get("OPEN_METRICS") == "1",
        drain_delay=float(os.environ.get("DRAIN_DELAY", "0")),
        graceful_timeout=float(os.environ.get("GRACEFUL_TIMEOUT", "25")),
        reuse_port=os.environ.get("REUSE_PORT") == "1",
        on_ready=lambda port: print("port", port, flush=True),
    )
    print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
