"""``make bench-slo``: the model emulator on upstream aqueduct 1.15 behind
aiohttp, as its README serves a flow (batches of 32, 5 ms fixed wait; it
has no latency objective). Run in upstream's venv.

    .venv-upstream/bin/python benches/slo/upstream_aiohttp.py --port 8000
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web
from aqueduct import Flow
from aqueduct.logger import log
from model import Item, Model, step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    log.setLevel(logging.WARNING)
    flow = Flow(step("fixed", Model()), metrics_enabled=False)

    async def start(_app: web.Application) -> None:
        flow.start()  # its background tasks go on the app's loop

    async def handle(request: web.Request) -> web.Response:
        task = Item(await request.json())
        if not await flow.process(task, timeout_sec=10):
            return web.json_response({"error": "timeout"}, status=504)
        return web.json_response(task.payload)

    app = web.Application()
    app.on_startup.append(start)
    app.router.add_post("/inference", handle)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
