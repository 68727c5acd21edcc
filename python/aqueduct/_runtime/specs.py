"""What each worker process of a flow is started with."""

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

__all__ = ["worker_specs"]


def worker_specs(
    topology: Topology,
    steps: Sequence[FlowStep],
    step_names: Sequence[str],
    spin: int,
    http: list[tuple[Any, Any, Any]] | None = None,
) -> list[WorkerSpec]:
    """What each worker is started with, in slot order (the workers of
    step 1, then of step 2, ...): its step, handler and every step's
    condition (pickled by value), and the segments by fd."""
    try:
        conditions_blob = cloudpickle.dumps([s.handle_condition for s in steps])
    except Exception as exc:
        raise FlowError(f"cannot pickle the steps' handle_condition: {exc}") from exc
    try:
        http_blob = cloudpickle.dumps(http) if http is not None else None
    except Exception as exc:
        raise FlowError(f"cannot pickle the HTTP server's functions: {exc}") from exc
    specs: list[WorkerSpec] = []
    for index, step in enumerate(steps):
        try:
            handler_blob = cloudpickle.dumps(step.handler)
        except Exception as exc:
            raise FlowError(f"cannot pickle handler of {step_names[index]}: {exc}") from exc
        for number in range(step.nprocs):
            slot = len(specs)
            device, env = step.placement(number)
            specs.append(
                WorkerSpec(
                    step_index=index,
                    step_name=step_names[index],
                    handler_blob=handler_blob,
                    conditions_blob=conditions_blob,
                    batch_size=step.batch_size,
                    batch_timeout=step.batch_timeout,
                    continuous=step.continuous,
                    nprocs=step.nprocs,
                    queue_fds=[q.fd for q in topology.queues],
                    doorbell_fds=[d.fd for d in topology.doorbells],
                    clients=topology.clients,
                    arena_fds=[a.fd for a in topology.arenas],
                    own_arena=topology.clients + slot,  # after the clients' arenas
                    control_fd=topology.control.fd,
                    slot=slot,
                    parent_pid=os.getpid(),
                    log_level=log.getEffectiveLevel(),
                    spin_us=spin,
                    sys_path=list(sys.path),
                    http_blob=http_blob,
                    worker_index=number,
                    device=device,
                    env=env,
                )
            )
    return specs
