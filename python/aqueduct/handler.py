"""The handler base class users subclass to wrap their model."""

from __future__ import annotations

from collections.abc import Callable

from ._ipc import identity
from ._ipc.identity import WorkerInfo
from .task import BaseTask

__all__ = ["BaseTaskHandler", "HandleConditionType", "WorkerInfo", "current_worker"]

HandleConditionType = Callable[[BaseTask], bool]


class BaseTaskHandler:
    """Wraps user logic for one flow step.

    ``on_start`` runs once in each worker process (load models there, so the
    parent does not hold their memory); ``handle`` receives a batch of tasks
    and sets results on them in place.
    """

    @classmethod
    def get_step_name(cls, step_number: int) -> str:
        return f"step{step_number}_{cls.__name__}"

    def on_start(self) -> None:
        """Called once in every worker process before it takes tasks."""

    def handle(self, *tasks: BaseTask) -> None:
        """Processes a batch of tasks (``1 <= len(tasks) <= batch_size``)."""
        raise NotImplementedError


def current_worker() -> WorkerInfo | None:
    """In a worker process (its handler's ``on_start`` and ``handle``): which
    worker of its step it is and its device; None in any other process."""
    return identity.current()
