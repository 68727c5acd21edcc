"""A flow step: a handler, how it batches and how many processes run it."""

from __future__ import annotations

import operator

from .handler import BaseTaskHandler, HandleConditionType

__all__ = ["FlowStep"]


class FlowStep:
    """One stage of a flow.

    ``handle_condition(task)`` false means the task skips this step.
    ``batch_size`` is the most tasks per ``handle`` call; with
    ``batch_timeout > 0`` a worker waits up to that many seconds after the
    first task for the batch to fill, with 0 it never waits.
    ``on_start_wait`` sleeps that many seconds after starting this step's
    processes (kept for upstream compatibility; not needed).

    ``continuous=True`` (continuous batching, for generative models): each
    worker keeps an active set of at most ``batch_size`` tasks and calls
    ``handle(*active)`` once per iteration, over and over; a task stays in
    the set until the handler calls ``task.finish()`` (then it is sent on at
    once), and tasks queued meanwhile join before the next iteration, so a
    batch is never held back by its longest member. A task whose caller
    left (or whose timeout passed) leaves the set between iterations.
    ``batch_timeout`` there: with an empty set, as in any step; after an
    iteration that finished tasks, how long the worker may wait for as many
    new ones to take their places (their callers often send the next one at
    once) before it starts the next iteration — 0 never waits.
    """

    def __init__(
        self,
        handler: BaseTaskHandler,
        handle_condition: HandleConditionType = operator.truth,
        nprocs: int = 1,
        batch_size: int = 1,
        batch_timeout: float = 0,
        on_start_wait: float = 0,
        *,
        continuous: bool = False,
    ) -> None:
        if not callable(getattr(handler, "handle", None)):
            raise TypeError(
                f"handler must be a BaseTaskHandler (or have a handle method), "
                f"got {type(handler).__name__}"
            )
        if not callable(handle_condition):
            raise TypeError("handle_condition must be callable")
        if int(nprocs) < 1:
            raise ValueError(f"nprocs must be >= 1, got {nprocs}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_timeout < 0:
            raise ValueError(f"batch_timeout must be >= 0, got {batch_timeout}")
        if on_start_wait < 0:
            raise ValueError(f"on_start_wait must be >= 0, got {on_start_wait}")
        self.handler = handler
        self.handle_condition = handle_condition
        self.nprocs = int(nprocs)
        self.batch_size = int(batch_size)
        self.batch_timeout = float(batch_timeout)
        self.on_start_wait = float(on_start_wait)
        self.continuous = bool(continuous)

    def __repr__(self) -> str:
        return (
            f"FlowStep({type(self.handler).__name__}, nprocs={self.nprocs}, "
            f"batch_size={self.batch_size}, batch_timeout={self.batch_timeout}"
            + (", continuous=True)" if self.continuous else ")")
        )
