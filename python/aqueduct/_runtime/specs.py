"""What each worker process of a flow is started with, and where it sits:
every step has a range of worker slots (claim slot + arena each), twice as
many as it runs at most, so that a handler replacement can start a full set
of new workers beside the old ones and an elastic step can grow."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import cloudpickle

from .._ipc.protocol import WorkerSpec
from .._ipc.topology import Topology
from ..exceptions import FlowError
from ..logger import log
from ..step import FlowStep

__all__ = ["WorkerSpecs", "slot_ranges"]


def slot_ranges(steps: Sequence[FlowStep]) -> list[range]:
    """The worker slots of each step, one range after the other."""
    ranges, start = [], 0
    for step in steps:
        ranges.append(range(start, start + 2 * step.max_nprocs))
        start += 2 * step.max_nprocs
    return ranges


def pickled_handler(handler: Any, step_name: str) -> bytes:
    try:
        blob: bytes = cloudpickle.dumps(handler)
        return blob
    except Exception as exc:
        raise FlowError(f"cannot pickle handler of {step_name}: {exc}") from exc


class WorkerSpecs:
    """Makes the spec of any worker of one flow on one set of segments."""

    def __init__(
        self,
        topology: Topology,
        steps: Sequence[FlowStep],
        step_names: Sequence[str],
        handlers: Sequence[Any],
        spin: int,
        http: list[tuple[Any, Any, Any, bool]] | None = None,
        *,
        tracing: bool = False,
        objectives: Sequence[float | None] | None = None,
    ) -> None:
        try:
            self._conditions = cloudpickle.dumps([s.handle_condition for s in steps])
        except Exception as exc:
            raise FlowError(f"cannot pickle the steps' handle_condition: {exc}") from exc
        try:
            self._http = cloudpickle.dumps(http) if http is not None else None
        except Exception as exc:
            raise FlowError(f"cannot pickle the HTTP server's functions: {exc}") from exc
        self._topology = topology
        self._steps = steps
        self._objectives = list(objectives or [None] * len(steps))
        self.step_names = step_names
        self._spin = spin
        self._tracing = tracing
        self.slots = slot_ranges(steps)
        self.handlers = [pickled_handler(h, step_names[i]) for i, h in enumerate(handlers)]

    def initial(self) -> list[WorkerSpec]:
        """Each step's first workers (``nprocs``), in slot order."""
        return [
            self.make(index, number, self.slots[index][number])
            for index, step in enumerate(self._steps)
            for number in range(step.nprocs)
        ]

    def first(self, index: int) -> int:
        """How many workers step ``index`` starts with."""
        return self._steps[index].nprocs

    def make(
        self, index: int, number: int, slot: int, handler_blob: bytes | None = None
    ) -> WorkerSpec:
        """Worker ``number`` of step ``index`` in ``slot``, running the step's
        handler (or ``handler_blob``)."""
        step, topology = self._steps[index], self._topology
        device, env = step.placement(number)
        return WorkerSpec(
            step_index=index,
            step_name=self.step_names[index],
            handler_blob=handler_blob or self.handlers[index],
            conditions_blob=self._conditions,
            batch_size=step.batch_size,
            batch_timeout=step.batch_timeout,
            latency_objective=self._objectives[index],
            continuous=step.continuous,
            nprocs=step.max_nprocs,
            queue_fds=[q.fd for q in topology.queues],
            doorbell_fds=[d.fd for d in topology.doorbells],
            clients=topology.clients,
            arena_fds=[a.fd for a in topology.arenas],
            own_arena=topology.clients + slot,  # after the clients' arenas
            control_fd=topology.control.fd,
            slot=slot,
            parent_pid=os.getpid(),
            log_level=log.getEffectiveLevel(),
            spin_us=self._spin,
            sys_path=list(sys.path),
            http_blob=self._http,
            worker_index=number,
            device=device,
            env=env,
            tracing=self._tracing,
        )
