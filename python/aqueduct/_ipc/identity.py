"""Which worker of a flow this process is: set once by the worker's runtime,
read by ``aqueduct.current_worker``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WorkerInfo", "current", "set_current"]


@dataclass(frozen=True)
class WorkerInfo:
    """Which worker process of a flow this is (see ``current_worker``)."""

    #: The step's name (``handler.get_step_name``).
    step_name: str
    #: This worker's number among its step's, ``0 .. nprocs - 1``; a
    #: respawned worker keeps the number (and the device) of the one it
    #: replaces, and so does a worker of a new handler
    #: (``Flow.replace_handler``).
    index: int
    #: How many workers the step runs at most (an elastic step's ``max``).
    nprocs: int
    #: The device of ``FlowStep(devices=...)`` this worker got (what its
    #: ``CUDA_VISIBLE_DEVICES`` says), or None.
    device: str | None


_current: WorkerInfo | None = None


def current() -> WorkerInfo | None:
    return _current


def set_current(info: WorkerInfo) -> None:
    """Called once by the worker's runtime, before the handler is unpickled."""
    global _current
    _current = info
