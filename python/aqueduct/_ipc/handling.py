"""What a handler's calls on its tasks (``emit``, ``finish``,
``is_cancelled``) reach: the engine of the worker process they run in, set
once when the worker starts. Outside a worker there is none."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Engine", "bind", "engine"]


class Engine(Protocol):
    """The worker's ``_core.StepWorker``, as far as tasks use it."""

    def emit(self, task: Any, part: Any) -> bool: ...
    def finish(self, task: Any) -> None: ...
    def is_cancelled(self, task: Any) -> bool: ...


_engine: Engine | None = None


def bind(worker_engine: Engine) -> None:
    """Makes ``worker_engine`` the one this process's tasks use."""
    global _engine
    _engine = worker_engine


def engine() -> Engine:
    """This worker's engine; RuntimeError outside a worker process."""
    if _engine is None:
        raise RuntimeError(
            "emit(), finish() and is_cancelled() are for a handler's tasks, "
            "inside handle() in a flow's worker"
        )
    return _engine
