"""The shared memory of one flow and its layout, as parent and workers see it.

Queues come in one list, the same in every process: the input queue of each
step, in step order, then one result queue per client (a process that submits
tasks). A task's key names its client in the bits above ``CLIENT_SHIFT``, so
any process finds the result queue of a task from its key alone. Each client
has a doorbell (an eventfd its event loop reads) and an arena; each worker
has an arena of its own after the clients' ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import _core
from .._core import CLIENT_SHIFT, DEFAULT_RING_SLOTS, DEFAULT_SLOT_BYTES
from ..exceptions import FlowError

__all__ = ["Topology"]


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
        steps_metered: bool,
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
            control=_core.Control.create(workers, steps + 1, steps_metered),
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
