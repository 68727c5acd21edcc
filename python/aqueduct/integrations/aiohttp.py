"""aiohttp integration.

    app = web.Application()
    AppIntegrator(app, map_errors=True).add_flow(Flow(FlowStep(MyHandler())))
    # handlers: request.app["flow"]  (or request.app[flow_name])

Flows start on application startup (bounded by ``FLOW_START_TIMEOUT``
seconds), stop on cleanup; with ``exit_on_fail`` the server process stops if a
flow stops serving. ``map_errors`` answers 503 for ``QueueFullError`` and 504
for ``TaskTimeoutError``. ``/metrics`` serves Prometheus metrics of every flow
(``metrics_path=None`` turns it off). A handler streams a task's parts
with ``return await stream_response(request, flow, task)`` (Server-Sent
Events; a client that disconnects cancels the task).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..flow import Flow
from ..logger import replace_logger
from ..task import BaseTask
from .utils import (
    EVENT_STREAM,
    FLOW_NAME,
    FLOW_START_TIMEOUT_DEFAULT,
    FLOW_START_TIMEOUT_NAME,
    METRICS_PATH,
    chunks,
    error_status,
    get_start_timeout,
    metrics_endpoint,
    observe_flows,
)

__all__ = [
    "AQUEDUCT_FLOW_NAMES",
    "FLOW_NAME",
    "FLOW_START_TIMEOUT_DEFAULT",
    "FLOW_START_TIMEOUT_NAME",
    "AppIntegrator",
    "get_start_timeout",
    "stream_response",
]

AQUEDUCT_FLOW_NAMES = "aqueduct_flow_names"
_OBSERVER = "aqueduct_flows_observer"
_TO_START = "aqueduct_flows_to_start"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def stream_response(
    request: web.Request,
    flow: Flow,
    task: BaseTask,
    timeout_sec: float = 5.0,
    encode: Callable[[Any], Any] | None = None,
    content_type: str = EVENT_STREAM,
) -> web.StreamResponse:
    """Streams the parts ``flow.stream(task)`` yields to the client, as
    ``aqueduct.http`` does (see ``integrations.utils.chunks``); a client
    that disconnects cancels the task."""
    response = web.StreamResponse(
        headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    parts = chunks(flow, task, timeout_sec, encode)
    try:
        async for chunk in parts:
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        pass  # the client left: closing the parts cancels the task
    finally:
        await parts.aclose()
    return response


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        status = error_status(exc)
        if status is None:
            raise
        raise _http_error(status, exc) from exc


def _http_error(status: int, exc: BaseException) -> web.HTTPException:
    cls = web.HTTPServiceUnavailable if status == 503 else web.HTTPGatewayTimeout
    return cls(text=str(exc))


class AppIntegrator:
    """Ties flows to an aiohttp application's lifecycle (create it once per app)."""

    def __init__(
        self,
        app: web.Application,
        exit_on_fail: bool = True,
        logger: logging.Logger | None = None,
        map_errors: bool = False,
        metrics_path: str | None = METRICS_PATH,
    ) -> None:
        if AQUEDUCT_FLOW_NAMES in app:
            raise RuntimeError(
                "AppIntegrator can be created only once. Reuse existing AppIntegrator."
            )
        self._app = app
        app[AQUEDUCT_FLOW_NAMES] = []
        app[_TO_START] = []
        app.on_startup.append(self._start_flows)
        if exit_on_fail:
            app.on_startup.append(self._run_observer)
            app.on_shutdown.append(self._stop_observer)
        app.on_cleanup.append(self._stop_flows)
        if map_errors:
            app.middlewares.append(_error_middleware)
        self._metrics = metrics_endpoint(metrics_path)
        if self._metrics is not None:
            app.router.add_get(metrics_path, self._serve_metrics)  # type: ignore[arg-type]
        if logger is not None:
            replace_logger(logger)

    def add_flow(self, flow: Flow, flow_name: str = FLOW_NAME, with_start: bool = True) -> None:
        """Registers ``flow`` as ``app[flow_name]``; with ``with_start`` it is
        started on application startup (else the caller starts it)."""
        if flow_name in self._app:
            raise RuntimeError(f'Flow with name "{flow_name}" already exists in app')
        self._app[AQUEDUCT_FLOW_NAMES].append(flow_name)
        self._app[flow_name] = flow
        if with_start:
            self._app[_TO_START].append(flow)
        if self._metrics is not None:
            self._metrics.add(flow, flow_name)

    def _flows(self, app: web.Application) -> dict[str, Flow]:
        return {name: app[name] for name in app[AQUEDUCT_FLOW_NAMES]}

    async def _start_flows(self, app: web.Application) -> None:
        for flow in app[_TO_START]:
            if not flow.is_running:
                # spawning and on_start block: keep the event loop free meanwhile
                await asyncio.to_thread(flow.start, get_start_timeout())

    async def _run_observer(self, app: web.Application) -> None:
        app[_OBSERVER] = asyncio.create_task(observe_flows(self._flows(app)))

    async def _stop_observer(self, app: web.Application) -> None:
        app[_OBSERVER].cancel()

    async def _stop_flows(self, app: web.Application) -> None:
        for flow in self._flows(app).values():
            await flow.stop()

    async def _serve_metrics(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response
