"""aqueduct: serve CPU/ML-bound work from asyncio through worker processes,
with dynamic batching, over a Rust shared-memory core."""

from .exceptions import AqueductError, FlowError, NotRunningError
from .flow import Flow, FlowState, FlowStep
from .handler import BaseTaskHandler
from .logger import log
from .task import BaseTask

__all__ = [
    "AqueductError",
    "BaseTask",
    "BaseTaskHandler",
    "Flow",
    "FlowError",
    "FlowState",
    "FlowStep",
    "NotRunningError",
    "log",
]
