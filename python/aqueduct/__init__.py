"""aqueduct: serve CPU/ML-bound work from asyncio through worker processes,
with dynamic batching, over a Rust shared-memory core."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .elastic import Elastic
from .exceptions import AqueductError, FlowError, NotRunningError
from .handler import BaseTaskHandler, WorkerInfo, current_worker
from .logger import log
from .step import FlowStep
from .task import BaseTask

if TYPE_CHECKING:
    from .flow import Flow, FlowState

__all__ = [
    "AqueductError",
    "BaseTask",
    "BaseTaskHandler",
    "Elastic",
    "Flow",
    "FlowError",
    "FlowState",
    "FlowStep",
    "NotRunningError",
    "WorkerInfo",
    "current_worker",
    "log",
]


def __getattr__(name: str) -> Any:
    """``Flow`` and ``FlowState`` are imported when first asked for: a
    worker process, which only runs handlers, never loads the parent's
    runtime (asyncio and all), so it starts faster — an elastic step grows
    sooner."""
    if name in ("Flow", "FlowState"):
        from . import flow

        value = getattr(flow, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'aqueduct' has no attribute {name!r}")
