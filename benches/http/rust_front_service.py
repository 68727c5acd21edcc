"""The two HTTP benchmark services on aqueduct's Rust HTTP front
(``aqueduct.http.serve``): the same no-op JSON handler and model emulator as
``aqueduct_service.py``, with no Python in the web process per request.

    python benches/http/rust_front_service.py --service noop --port 8000
"""

from __future__ import annotations

import argparse
import logging

from aqueduct.http import Request, serve
from aqueduct.logger import log
from aqueduct_service import JsonTask, build_flow


def task_from_request(request: Request) -> JsonTask:
    return JsonTask(request.json())


def response_from_task(task: JsonTask) -> object:
    return task.answer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--service", choices=["noop", "model"], default="noop")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    log.setLevel(logging.WARNING)
    serve(
        build_flow(args.service, 1),
        task_from_request=task_from_request,
        response_from_task=response_from_task,
        port=args.port,
        path="/inference",
        timeout=30,
        threads=args.threads,
    )


if __name__ == "__main__":
    main()
