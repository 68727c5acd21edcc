"""What the web integrations share: start timeout, the flow observer, HTTP
statuses for flow errors, streamed parts as chunks, and the Prometheus
registry behind /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from .. import _core
from ..exceptions import FlowError, QueueFullError, TaskTimeoutError
from ..logger import log

if TYPE_CHECKING:
    from ..flow import Flow
    from ..task import BaseTask

#: The content type of a stream of Server-Sent Events.
EVENT_STREAM = "text/event-stream"

FLOW_START_TIMEOUT_NAME = "FLOW_START_TIMEOUT"
FLOW_START_TIMEOUT_DEFAULT = 300.0
FLOW_NAME = "flow"
METRICS_PATH = "/metrics"


def get_start_timeout() -> float | None:
    """``FLOW_START_TIMEOUT`` seconds from the environment (default 300;
    0 or less: no bound)."""
    try:
        timeout = float(os.environ.get(FLOW_START_TIMEOUT_NAME, FLOW_START_TIMEOUT_DEFAULT))
    except ValueError:
        timeout = FLOW_START_TIMEOUT_DEFAULT
    return None if timeout <= 0 else timeout


def dead_flow(flows: dict[str, Flow]) -> str | None:
    """The name and reason of a flow that cannot serve any more, if any."""
    for name, flow in flows.items():
        if not flow.is_running:
            return f"flow {name!r} is {flow.state.value}"
        if flow.failure is not None:
            return f"flow {name!r} failed: {flow.failure}"
    return None


async def observe_flows(flows: dict[str, Flow], check_interval: float = 1.0) -> None:
    """Stops the server process (SIGTERM to itself, so no other code can
    delay it) as soon as a flow stops serving."""
    while True:
        reason = dead_flow(flows)
        if reason is not None:
            log.error("%s; the application will be stopped", reason)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        await asyncio.sleep(check_interval)


def error_status(exc: BaseException) -> int | None:
    """503 for a full queue (come back later), 504 for a task that timed out."""
    if isinstance(exc, QueueFullError):
        return 503
    if isinstance(exc, TaskTimeoutError):
        return 504
    return None


async def chunks(
    flow: Flow,
    task: BaseTask,
    timeout_sec: float = 5.0,
    encode: Callable[[Any], Any] | None = None,
) -> AsyncGenerator[bytes, None]:
    """The parts of ``flow.stream(task)`` as the chunks of a streamed HTTP
    response, as ``aqueduct.http`` sends them: bytes as they are, anything
    else as one Server-Sent Event (``encode(part)`` first, if given). A
    flow error mid-stream ends it with an ``error`` event; the web server
    closing the generator (its client left) cancels the task."""
    parts = flow.stream(task, timeout_sec=timeout_sec)
    try:
        async for part in parts:
            yield _core.part_chunk(part if encode is None else encode(part))
    except FlowError as exc:
        yield _core.error_event(str(exc), type(exc).__name__)
    finally:
        await parts.aclose()


class MetricsEndpoint:
    """A Prometheus registry with a collector per registered flow."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()

    def add(self, flow: Flow, flow_name: str) -> None:
        from ..metrics.prometheus import register

        register(flow, flow_name, self.registry)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def metrics_endpoint(path: str | None) -> Any:
    """A MetricsEndpoint when ``path`` is set and prometheus_client is installed."""
    if path is None:
        return None
    try:
        return MetricsEndpoint()
    except ImportError:
        log.info("prometheus_client is not installed: no %s endpoint", path)
        return None
