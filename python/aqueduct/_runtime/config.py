"""What a user builds a flow with, checked once: its steps and their names,
its queues, shared memory, clients, start method and metrics. It does not
change while the flow runs (``FlowRuntime`` owns what does)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .. import _core
from .._core import MAX_CLIENTS, MAX_PRIORITIES, MAX_STEPS
from .._ipc.shm import THRESHOLD
from ..exceptions import MPStartMethodValueError
from ..handler import BaseTaskHandler
from ..logger import log
from ..metrics import Collector, Exporter, MetricsTypes
from ..step import FlowStep, check_objective

__all__ = ["START_METHODS", "FlowConfig", "spin_us"]

START_METHODS = ("spawn", "fork", "forkserver")


def spin_us() -> int:
    """How long a worker with an empty queue spins before it sleeps:
    ``AQUEDUCT_SPIN_US`` from the environment (0 turns spinning off), else the
    core's default. It spins only while that pays (see the core's spin.rs)."""
    try:
        return max(0, int(os.environ.get("AQUEDUCT_SPIN_US", _core.DEFAULT_SPIN_US)))
    except ValueError:
        return _core.DEFAULT_SPIN_US


def step_name(handler: Any, number: int) -> str:
    """A step's name: its handler's ``get_step_name``, as upstream."""
    get_name = getattr(handler, "get_step_name", None)
    if callable(get_name):
        return str(get_name(number))
    return str(BaseTaskHandler.get_step_name.__func__(type(handler), number))  # type: ignore[attr-defined]


@dataclass(frozen=True)
class FlowConfig:
    """A flow as its user built it (see ``Flow`` for each argument)."""

    steps: tuple[FlowStep, ...]
    step_names: tuple[str, ...]
    queue_size: int | None
    reject_when_full: bool
    priorities: int
    start_method: str
    shm_size: int
    clients: int
    collector: Collector
    exporter: Exporter | None
    spin_us: int
    tracing: bool = False
    #: Per step, its latency objective in seconds (its own, or the flow's).
    objectives: tuple[float | None, ...] = ()

    @classmethod
    def build(
        cls,
        steps: tuple[FlowStep | BaseTaskHandler, ...],
        *,
        metrics_enabled: bool,
        metrics_collector: Collector | None,
        metrics_exporter: Exporter | None,
        queue_size: int | None,
        queue_priorities: int,
        mp_start_method: str,
        shm_size: int,
        queue_full: str,
        clients: int,
        tracing: bool = False,
        latency_objective: float | None = None,
    ) -> FlowConfig:
        """Checks the arguments of ``Flow``; raises what is wrong with them."""
        if mp_start_method not in START_METHODS:
            raise MPStartMethodValueError(
                f"mp_start_method must be one of {START_METHODS}, got {mp_start_method!r}"
            )
        if queue_size is not None and int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1 or None, got {queue_size}")
        if not 1 <= int(queue_priorities) <= MAX_PRIORITIES:
            raise ValueError(
                f"queue_priorities must be in 1..{MAX_PRIORITIES}, got {queue_priorities}"
            )
        if queue_full not in ("wait", "reject"):
            raise ValueError(f"queue_full must be 'wait' or 'reject', got {queue_full!r}")
        if not 1 <= int(clients) <= MAX_CLIENTS:
            raise ValueError(f"clients must be in 1..{MAX_CLIENTS}, got {clients}")
        if int(shm_size) < THRESHOLD:
            raise ValueError(f"shm_size must be >= {THRESHOLD} bytes, got {shm_size}")
        if len(steps) > MAX_STEPS:
            raise ValueError(f"a flow has at most {MAX_STEPS} steps, got {len(steps)}")
        if tracing:
            from .. import tracing as _tracing

            _tracing.require()  # the extra is installed, or a clear error now
        built = tuple(step if isinstance(step, FlowStep) else FlowStep(step) for step in steps)
        default = check_objective(latency_objective)
        if default is not None and any(s.continuous and s.latency_objective is None for s in built):
            raise ValueError("latency_objective is not supported with continuous=True yet")
        objectives = tuple(
            s.latency_objective if s.latency_objective is not None else default for s in built
        )
        collector = metrics_collector or Collector()
        if not metrics_enabled:
            log.warning("Metrics collecting is disabled")
            collector = Collector(collectible_metrics=[])
        return cls(
            steps=built,
            step_names=tuple(step_name(s.handler, n) for n, s in enumerate(built, 1)),
            queue_size=None if queue_size is None else int(queue_size),
            reject_when_full=queue_full == "reject",
            priorities=int(queue_priorities),
            start_method=mp_start_method,
            shm_size=int(shm_size),
            clients=int(clients),
            collector=collector,
            exporter=metrics_exporter,
            objectives=objectives,
            spin_us=spin_us(),
            tracing=bool(tracing),
        )

    @property
    def collects_metrics(self) -> bool:
        """Whether steps record their metrics in shared memory."""
        return self.collector.is_collectible(MetricsTypes.TASK_TIMERS)
