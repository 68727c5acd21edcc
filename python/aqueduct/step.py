"""A flow step: a handler, how it batches and how many processes run it."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping, Sequence

from .elastic import Elastic
from .handler import BaseTaskHandler, HandleConditionType

#: Environment of a step's workers: the same for each, or a function of the
#: worker's number among its step's.
WorkerEnv = Mapping[str, str] | Callable[[int], Mapping[str, str]]

__all__ = ["FlowStep", "check_handler", "check_objective"]


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

    ``devices`` pins each worker to an accelerator: worker ``i`` (of
    ``nprocs``) gets ``devices[i % len(devices)]`` as its
    ``CUDA_VISIBLE_DEVICES`` (so ``nprocs=8, devices=[0, 1, 2, 3]`` puts two
    workers on each GPU; a device may be a string such as ``"0,1"`` for two
    GPUs per worker). ``env`` adds environment variables to each worker — a
    mapping, or a function of the worker's number returning one — and wins
    over ``devices``'. Both are set before the worker imports the handler's
    module; a respawned worker gets its predecessor's. In the worker,
    ``aqueduct.current_worker()`` says its number and device (also in
    ``AQUEDUCT_WORKER_INDEX`` and ``AQUEDUCT_DEVICE``).

    ``latency_objective`` (seconds, or the flow's ``latency_objective``)
    makes the step batch for a latency objective instead of a fixed wait:
    its workers learn what a batch of n costs from their handle times, and
    wait for a batch to fill only as long as the oldest task in it can still
    be done within the objective of entering the flow (never longer than
    ``batch_timeout`` when that is set too); a task that cannot make it even
    alone is refused before any work with
    :class:`~aqueduct.exceptions.OverloadedError` (HTTP: 429). A task's
    ``timeout_sec`` stays its hard deadline.

    ``nprocs=(min, max)`` (or an :class:`~aqueduct.Elastic`) makes the step
    elastic: it starts ``min`` workers and grows up to ``max`` while tasks
    wait in its queue, then shrinks back when they are not needed (see
    ``Elastic``). Workers are numbered from 0 up, the lowest free number
    first, so ``devices`` place them the same way.
    """

    def __init__(
        self,
        handler: BaseTaskHandler,
        handle_condition: HandleConditionType = operator.truth,
        nprocs: int | tuple[int, int] | Elastic = 1,
        batch_size: int = 1,
        batch_timeout: float = 0,
        on_start_wait: float = 0,
        *,
        continuous: bool = False,
        devices: Sequence[int | str] | None = None,
        env: WorkerEnv | None = None,
        latency_objective: float | None = None,
    ) -> None:
        check_handler(handler)
        if not callable(handle_condition):
            raise TypeError("handle_condition must be callable")
        if isinstance(nprocs, tuple):
            nprocs = Elastic(*nprocs)
        self.elastic = nprocs if isinstance(nprocs, Elastic) else None
        first = nprocs.min if isinstance(nprocs, Elastic) else int(nprocs)
        if first < 1:
            raise ValueError(f"nprocs must be >= 1, got {nprocs}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_timeout < 0:
            raise ValueError(f"batch_timeout must be >= 0, got {batch_timeout}")
        if on_start_wait < 0:
            raise ValueError(f"on_start_wait must be >= 0, got {on_start_wait}")
        self.handler = handler
        self.handle_condition = handle_condition
        #: Workers at start (an elastic step's ``min``).
        self.nprocs = first
        #: The most workers the step runs at once (beside those a handler
        #: replacement starts).
        self.max_nprocs = self.elastic.max if self.elastic is not None else self.nprocs
        self.batch_size = int(batch_size)
        self.batch_timeout = float(batch_timeout)
        self.on_start_wait = float(on_start_wait)
        self.continuous = bool(continuous)
        #: Seconds from a task entering the flow to its leaving this step
        #: (None: the flow's, if it has one).
        self.latency_objective = check_objective(latency_objective)
        if self.latency_objective is not None and self.continuous:
            raise ValueError("latency_objective is not supported with continuous=True yet")
        self.devices = _devices(devices)
        if env is not None and not (callable(env) or isinstance(env, Mapping)):
            raise TypeError("env must be a mapping or a function of the worker's number")
        self.env = env
        if isinstance(env, Mapping):
            self.placement(0)  # its names and values are checked now

    def placement(self, number: int) -> tuple[str | None, dict[str, str]]:
        """Worker ``number``'s device and the environment it starts with."""
        device = self.devices[number % len(self.devices)] if self.devices else None
        env = {"AQUEDUCT_WORKER_INDEX": str(number)}
        if device is not None:
            env |= {"CUDA_VISIBLE_DEVICES": device, "AQUEDUCT_DEVICE": device}
        extra = self.env(number) if callable(self.env) else self.env
        for name, value in (extra or {}).items():
            if not (isinstance(name, str) and isinstance(value, str)):
                raise TypeError(f"env of worker {number}: {name!r}={value!r} is not str=str")
            env[name] = value
        return device, env

    def __repr__(self) -> str:
        nprocs = f"({self.nprocs}, {self.max_nprocs})" if self.elastic is not None else self.nprocs
        return (
            f"FlowStep({type(self.handler).__name__}, nprocs={nprocs}, "
            f"batch_size={self.batch_size}, batch_timeout={self.batch_timeout}"
            + (", continuous=True)" if self.continuous else ")")
        )


def check_handler(handler: object) -> None:
    """Raises TypeError unless ``handler`` can handle tasks."""
    if not callable(getattr(handler, "handle", None)):
        raise TypeError(
            f"handler must be a BaseTaskHandler (or have a handle method), "
            f"got {type(handler).__name__}"
        )


def _devices(devices: Sequence[int | str] | int | str | None) -> list[str] | None:
    if devices is None:
        return None
    if isinstance(devices, str | int):
        devices = [devices]
    out = []
    for device in devices:
        if isinstance(device, bool) or not isinstance(device, int | str):
            raise TypeError(f"a device is a number or a string, got {device!r}")
        if (isinstance(device, int) and device < 0) or str(device).strip() == "":
            raise ValueError(f"no such device: {device!r}")
        out.append(str(device))
    if not out:
        raise ValueError("devices must name at least one device (None: no pinning)")
    return out


def check_objective(value: float | None) -> float | None:
    """A latency objective as given (seconds), checked: None, or a finite
    number above 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"latency_objective must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"latency_objective must be a finite number of seconds > 0, not {value}")
    return float(value)
