"""The shared memory of one flow and its layout, as parent and workers see it.

Queues come in one list, the same in every process: the input queue of each
step, in step order, then one result queue per client (a process that submits
tasks). A task's key names its client in the bits above ``CLIENT_SHIFT``, so
any process finds the result queue of a task from its key alone. Each client
has a doorbell (an eventfd its event loop reads) and an arena; each worker
has an arena of its own after the clients' ones.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cloudpickle

from . import _core
from ._core import CLIENT_SHIFT, DEFAULT_RING_SLOTS, DEFAULT_SLOT_BYTES, DEFAULT_SPIN_US
from ._protocol import WorkerSpec
from .exceptions import FlowError
from .logger import log
from .step import FlowStep

__all__ = ["Topology", "spin_us"]


def spin_us() -> int:
    """How long a worker with an empty queue spins before it sleeps:
    ``AQUEDUCT_SPIN_US`` from the environment (0 turns spinning off), else the
    core's default. It spins only while that pays (see the core's spin.rs)."""
    try:
        return max(0, int(os.environ.get("AQUEDUCT_SPIN_US", DEFAULT_SPIN_US)))
    except ValueError:
        return DEFAULT_SPIN_US


@dataclass
class Topology:
    """The queues, doorbells, control block and arenas of one flow."""

    steps: int
    clients: int
    queues: list[_core.Queue]
    doorbells: list[_core.Doorbell]
    control: _core.Control
    arenas: list[_core.SharedArena]

    @classmethod
    def create(
        cls,
        *,
        steps: int,
        clients: int,
        workers: int,
        priorities: int,
        queue_size: int | None,
        shm_size: int,
        metric_steps: int,
        spin: int,
    ) -> Topology:
        """New segments, all of them, for a flow being started in this
        process: nothing is shared with another flow, before or after."""
        queues = [
            _core.Queue.create(
                priorities, DEFAULT_RING_SLOTS, DEFAULT_SLOT_BYTES, queue_size or 0, spin
            )
            for _ in range(steps)
        ]
        queues += [
            _core.Queue.create(1, DEFAULT_RING_SLOTS, DEFAULT_SLOT_BYTES, 0, spin)
            for _ in range(clients)
        ]
        return cls(
            steps=steps,
            clients=clients,
            queues=queues,
            doorbells=[_core.Doorbell() for _ in range(clients)],
            control=_core.Control.create(workers, metric_steps),
            arenas=[_core.SharedArena.create(shm_size, True) for _ in range(clients + workers)],
        )

    @classmethod
    def open(
        cls,
        *,
        queue_fds: list[int],
        doorbell_fds: list[int],
        control_fd: int,
        arena_fds: list[int],
        own_arena: int,
        spin: int,
        track: bool = False,
    ) -> Topology:
        """A worker's view of the segments it was handed (by fd), or with
        ``track``, a client's; it allocates in ``own_arena`` only."""
        clients = len(doorbell_fds)
        return cls(
            steps=len(queue_fds) - clients,
            clients=clients,
            queues=[_core.Queue.open(fd, spin_us=spin) for fd in queue_fds],
            doorbells=[_core.Doorbell.open(fd) for fd in doorbell_fds],
            control=_core.Control.open(control_fd),
            arenas=[
                _core.SharedArena.open(fd, own=index == own_arena, track=track)
                for index, fd in enumerate(arena_fds)
            ],
        )

    @classmethod
    def adopt(
        cls, *, steps: int, clients: int, fds: list[int], slot: int | None, spin: int
    ) -> tuple[Topology, int]:
        """A client's view of the segments a flow moved to, handed over as
        ``fds`` (in the order of ``fds()``; the caller keeps them), and its
        client slot there: ``slot``, the one it had, or the next free one."""
        queues = steps + clients
        if steps < 0 or clients < 1 or len(fds) < queues + 2 * clients + 1:
            raise FlowError(f"{len(fds)} fds cannot hold a flow of {steps} steps")
        if slot is None:
            slot = _core.Control.open(fds[queues + clients]).claim_client()
        if slot >= clients:
            raise FlowError(f"more processes submit tasks than Flow(clients={clients}) allows")
        topology = cls.open(
            queue_fds=fds[:queues],
            doorbell_fds=fds[queues : queues + clients],
            control_fd=fds[queues + clients],
            arena_fds=fds[queues + clients + 1 :],
            own_arena=slot,
            spin=spin,
            track=True,
        )
        return topology, slot

    def fds(self) -> list[int]:
        """Every segment's fd: queues, doorbells, the control block, arenas."""
        return [
            *(q.fd for q in self.queues),
            *(d.fd for d in self.doorbells),
            self.control.fd,
            *(a.fd for a in self.arenas),
        ]

    def worker_specs(
        self,
        steps: Sequence[FlowStep],
        step_names: Sequence[str],
        spin: int,
        http: list[tuple[Any, Any]] | None = None,
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
            for _ in range(step.nprocs):
                slot = len(specs)
                specs.append(
                    WorkerSpec(
                        step_index=index,
                        step_name=step_names[index],
                        handler_blob=handler_blob,
                        conditions_blob=conditions_blob,
                        batch_size=step.batch_size,
                        batch_timeout=step.batch_timeout,
                        nprocs=step.nprocs,
                        queue_fds=[q.fd for q in self.queues],
                        doorbell_fds=[d.fd for d in self.doorbells],
                        clients=self.clients,
                        arena_fds=[a.fd for a in self.arenas],
                        own_arena=self.clients + slot,  # after the clients' arenas
                        control_fd=self.control.fd,
                        slot=slot,
                        parent_pid=os.getpid(),
                        log_level=log.getEffectiveLevel(),
                        spin_us=spin,
                        sys_path=list(sys.path),
                        http_blob=http_blob,
                    )
                )
        return specs

    def client_of(self, key: int) -> int:
        """The client that submitted the task ``key``."""
        return min(key >> CLIENT_SHIFT, self.clients - 1)

    def results_index(self, key: int) -> int:
        """Index (in ``queues``) of the result queue of the task ``key``."""
        return self.steps + self.client_of(key)

    def result_queue(self, client: int) -> _core.Queue:
        return self.queues[self.steps + client]

    def notify(self, index: int) -> None:
        """Wakes the consumers of queue ``index``: a step's workers, or a
        client's event loop through its doorbell."""
        if index >= self.steps:
            self.queues[index].notify(self.doorbells[index - self.steps])
        else:
            self.queues[index].notify()

    def close(self) -> None:
        """Nothing more is accepted or delivered: workers drain and exit."""
        for queue in self.queues:
            queue.close()

    @property
    def shm_used(self) -> int:
        return sum(arena.used for arena in self.arenas)
