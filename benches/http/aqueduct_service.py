"""The two HTTP benchmark services on aqueduct: a no-op JSON handler and a
model emulator (2 ms + 0.2 ms per item, batches of 32, 5 ms max wait).

    python benches/http/aqueduct_service.py --service noop --port 8000 [--servers 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import time

from aiohttp import web
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep
from aqueduct.logger import log


class JsonTask(BaseTask):
    def __init__(self, payload: object) -> None:
        super().__init__()
        self.payload = payload
        self.answer: object = None


class Noop(BaseTaskHandler):
    def handle(self, *tasks: JsonTask) -> None:  # type: ignore[override]
        for task in tasks:
            task.answer = task.payload


class ModelEmulator(BaseTaskHandler):
    """Sleeps like a batched model: 2 ms per batch plus 0.2 ms per item."""

    def handle(self, *tasks: JsonTask) -> None:  # type: ignore[override]
        time.sleep(0.002 + 0.0002 * len(tasks))
        for task in tasks:
            task.answer = task.payload


def build_flow(service: str, clients: int) -> Flow:
    if service == "noop":
        step = FlowStep(Noop())
    else:
        step = FlowStep(ModelEmulator(), batch_size=32, batch_timeout=0.005)
    return Flow(step, metrics_enabled=False, clients=clients)


def make_app(flow: Flow) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        task = JsonTask(await request.json())
        await flow.process(task, timeout_sec=30)
        return web.json_response(task.answer)

    app = web.Application()
    app.router.add_post("/inference", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--service", choices=["noop", "model"], default="noop")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--servers", type=int, default=1)
    args = parser.parse_args()
    log.setLevel(logging.WARNING)
    flow = build_flow(args.service, args.servers)
    flow.start(timeout=60)
    sock = socket.create_server(("127.0.0.1", args.port), backlog=4096)
    if args.servers == 1:
        web.run_app(make_app(flow), sock=sock, print=None, access_log=None)
        return
    children = []
    for _ in range(args.servers):
        pid = os.fork()
        if pid == 0:
            web.run_app(make_app(flow), sock=sock, print=None, access_log=None)
            os._exit(0)
        children.append(pid)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
