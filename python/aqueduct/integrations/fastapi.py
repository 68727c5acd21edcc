"""FastAPI integration::

    app = FastAPI()
    AppIntegrator(app, map_errors=True).add_flow(build_flow())

    @app.post("/predict")
    async def predict(body: Body, flow: Flow = Depends(get_flow())):
        ...

or, with your own lifespan, ``FastAPI(lifespan=flow_lifespan({"flow": build_flow()}))``.
A route streams a task's parts with ``return streaming_response(flow, task)``
(Server-Sent Events; a client that disconnects cancels the task).
Flows start before the application serves (bounded by ``FLOW_START_TIMEOUT``)
and stop on shutdown; with ``exit_on_fail`` the server process stops if a flow
stops serving. ``map_errors`` answers 503 for ``QueueFullError`` and 504 for
``TaskTimeoutError``. ``/metrics`` serves Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from ..exceptions import QueueFullError, TaskTimeoutError
from ..flow import Flow
from ..logger import replace_logger
from ..task import BaseTask
from .utils import (
    EVENT_STREAM,
    FLOW_NAME,
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
    "AppIntegrator",
    "flow_lifespan",
    "get_flow",
    "streaming_response",
]

AQUEDUCT_FLOW_NAMES = "aqueduct_flow_names"


def get_flow(flow_name: str = FLOW_NAME) -> Callable[[Request], Flow]:
    """A dependency resolving the flow registered as ``flow_name``:
    ``flow: Flow = Depends(get_flow())``."""

    def _get_flow(request: Request) -> Flow:
        flow = getattr(request.app.state, flow_name)
        if not isinstance(flow, Flow):
            raise TypeError(f"app.state.{flow_name} is {type(flow).__name__}, not a Flow")
        return flow

    return _get_flow


def streaming_response(
    flow: Flow,
    task: BaseTask,
    timeout_sec: float = 5.0,
    encode: Callable[[Any], Any] | None = None,
    media_type: str = EVENT_STREAM,
) -> StreamingResponse:
    """A response streaming the parts ``flow.stream(task)`` yields, as
    ``aqueduct.http`` does (see ``integrations.utils.chunks``)."""
    return StreamingResponse(chunks(flow, task, timeout_sec, encode), media_type=media_type)


def flow_lifespan(flows: dict[str, Flow], exit_on_fail: bool = True) -> Callable[[FastAPI], Any]:
    """A lifespan that starts ``flows`` (name -> flow), puts them in
    ``app.state`` and stops them on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _running(app, flows, exit_on_fail):
            yield

    return lifespan


@asynccontextmanager
async def _running(app: FastAPI, flows: dict[str, Flow], exit_on_fail: bool) -> AsyncIterator[None]:
    for name, flow in flows.items():
        setattr(app.state, name, flow)
        if flow.are_steps_initialized:
            flow.start_inited()
        elif not flow.is_running:
            await asyncio.to_thread(flow.start, get_start_timeout())
    observer = asyncio.create_task(observe_flows(flows)) if exit_on_fail else None
    try:
        yield
    finally:
        if observer is not None:
            observer.cancel()
        for flow in flows.values():
            await flow.stop()


async def _flow_error(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(str(exc), status_code=error_status(exc) or 500)


class AppIntegrator:
    """Ties flows to a FastAPI application's lifespan (create it once per app)."""

    def __init__(
        self,
        app: FastAPI,
        exit_on_fail: bool = True,
        logger: logging.Logger | None = None,
        map_errors: bool = False,
        metrics_path: str | None = METRICS_PATH,
    ) -> None:
        if hasattr(app.state, AQUEDUCT_FLOW_NAMES):
            raise RuntimeError(
                "AppIntegrator can be created only once. Reuse existing AppIntegrator."
            )
        self._app = app
        self._exit_on_fail = exit_on_fail
        self._started = False
        self._flows: dict[str, Flow] = {}
        setattr(app.state, AQUEDUCT_FLOW_NAMES, [])
        app.router.lifespan_context = self._wrap(app.router.lifespan_context)
        if map_errors:
            app.add_exception_handler(QueueFullError, _flow_error)
            app.add_exception_handler(TaskTimeoutError, _flow_error)
        self._metrics = metrics_endpoint(metrics_path)
        if self._metrics is not None and metrics_path is not None:
            app.add_api_route(metrics_path, self._serve_metrics, include_in_schema=False)
        if logger is not None:
            replace_logger(logger)

    def add_flow(self, flow: Flow, flow_name: str = FLOW_NAME, with_start: bool = True) -> None:
        """Registers ``flow`` as ``app.state.<flow_name>``. With ``with_start``
        its processes start now (models load before the server accepts
        connections) and it starts serving with the application."""
        if self._started:
            raise RuntimeError("Flows must be added before the application startup")
        if flow_name in self._flows:
            raise RuntimeError(f'Flow with name "{flow_name}" already exists in app')
        if with_start and not flow.is_running:
            flow.init_processes(timeout=get_start_timeout())
        self._flows[flow_name] = flow
        getattr(self._app.state, AQUEDUCT_FLOW_NAMES).append(flow_name)
        setattr(self._app.state, flow_name, flow)
        if self._metrics is not None:
            self._metrics.add(flow, flow_name)

    def _wrap(self, user_lifespan: Callable[[FastAPI], Any]) -> Callable[[FastAPI], Any]:
        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
            self._started = True
            async with _running(app, self._flows, self._exit_on_fail):
                async with user_lifespan(app) as state:
                    yield state

        return lifespan

    async def _serve_metrics(self) -> Response:
        body, content_type = self._metrics.render()
        return Response(content=body, media_type=content_type)
