"""The states a flow goes through (``aqueduct.flow.FlowState``)."""

from __future__ import annotations

from enum import Enum

__all__ = ["FlowState"]


class FlowState(Enum):
    RUNNING = "running"
    STARTING = "starting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    STEPS_INITIALIZED = "steps_initialized"
