"""aqueduct: serve CPU/ML-bound work from asyncio through worker processes,
with dynamic batching, over a Rust shared-memory core."""

from .elastic import Elastic
from .exceptions import AqueductError, FlowError, NotRunningError
from .flow import Flow, FlowState, FlowStep
from .handler import BaseTaskHandler, WorkerInfo, current_worker
from .logger import log
from .task import BaseTask

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
