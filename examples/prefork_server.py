"""One Flow shared by several web-server processes.

The master process starts the Flow (its workers, queues and shared memory),
then forks the server processes; each serves HTTP on the same listening socket
and submits to the Flow over shared memory, through its own result queue.
``Flow(clients=N)`` says how many processes may submit.

    python examples/prefork_server.py --port 8080 --servers 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import socket
import sys
import threading
import time

from aiohttp import web
from aqueduct import BaseTask, BaseTaskHandler, Flow, FlowStep


class SumTask(BaseTask):
    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number
        self.sum: int | None = None


class SumHandler(BaseTaskHandler):
    def handle(self, *tasks: SumTask) -> None:  # type: ignore[override]
        for task in tasks:
            task.sum = sum(i * i for i in range(task.number))


def exit_with(master: int) -> None:
    """A server process ends when the master does, even if it was SIGKILLed."""
    pidfd = os.pidfd_open(master)
    if os.getppid() != master:
        os._exit(1)
    threading.Thread(
        target=lambda: (select.select([pidfd], [], []), os._exit(1)), daemon=True
    ).start()


def serve(flow: Flow, sock: socket.socket, master: int) -> None:
    """Runs in each forked server process."""
    exit_with(master)

    async def sum_view(request: web.Request) -> web.Response:
        task = SumTask(int(await request.read()))
        await flow.process(task)
        return web.json_response({"result": task.sum, "server": os.getpid()})

    app = web.Application()
    app.router.add_post("/sum", sum_view)
    web.run_app(app, sock=sock, print=None, handle_signals=True, shutdown_timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--servers", type=int, default=2)
    args = parser.parse_args()

    flow = Flow(FlowStep(SumHandler(), nprocs=2, batch_size=16), clients=args.servers)
    flow.start(timeout=60)

    sock = socket.create_server(("127.0.0.1", args.port))
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    children = []
    master = os.getpid()
    for _ in range(args.servers):
        pid = os.fork()
        if pid == 0:
            serve(flow, sock, master)
            os._exit(0)
        children.append(pid)
    sock.close()

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    alive = set(children)
    while not stopping and alive == set(children):
        signal.sigtimedwait([signal.SIGCHLD], 0.5)
        alive = {pid for pid in children if os.waitpid(pid, os.WNOHANG) == (0, 0)}
    for pid in alive:
        os.kill(pid, signal.SIGTERM)  # servers finish their requests and exit
    deadline = time.monotonic() + 10
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if os.waitpid(pid, os.WNOHANG) == (0, 0)}
        time.sleep(0.05)
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    asyncio.run(flow.stop())
    sys.exit(0)


if __name__ == "__main__":
    main()
