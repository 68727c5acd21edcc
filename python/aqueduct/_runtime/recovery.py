"""What a flow does when its workers die: the supervisor's monitor thread
calls in here. Tasks a dead worker held fail at once, in whichever process
submitted them; a queue a worker left mid-push is unstuck; a step whose
workers keep dying is declared down, failing every caller waiting on it."""

from __future__ import annotations

import os
from collections.abc import Callable

from .._core import KIND_ERROR, Message
from .._ipc.protocol import encode_error
from .._ipc.topology import Topology
from ..exceptions import FlowError, SharedMemoryCorruptError, WorkerDiedError
from ..logger import log
from .worker_process import WorkerProcess

__all__ = ["Recovery"]


class Recovery:
    """One flow's answers to worker deaths, for as long as it runs."""

    def __init__(
        self,
        topology: Topology,
        serving: Callable[[], bool],
        fail_callers: Callable[[FlowError], None],
    ) -> None:
        self._topology = topology
        self._serving = serving
        self._fail_callers = fail_callers
        self._deaths = 0  # worker deaths seen (enables the unwedging check)
        self._unpublished: set[tuple[int, int, int]] = set()
        #: Why the flow cannot serve although it runs, once a step is down.
        self.broken: str | None = None
        #: Whether that is because a worker found the shared memory corrupt.
        self.corrupt = False

    def worker_died(self, worker: WorkerProcess, how: str, keys: list[int]) -> None:
        """Each task the worker held fails at once (an error in its client's
        result queue, whichever process that is); the supervisor respawns
        the worker."""
        if not self._serving():
            return
        self._deaths += 1
        topology = self._topology
        pid = worker.process.pid
        name = worker.step_name
        log.error("The process %s of %s died (%s) holding %d task(s)", pid, name, how, len(keys))
        died = WorkerDiedError(f"{name}: worker {pid} died ({how}) while handling the task")
        payload = encode_error(name, died, WorkerDiedError)
        touched = set()
        for key in keys:
            index = topology.results_index(key)
            message = Message(key=key, kind=KIND_ERROR, payload=payload)
            try:
                if topology.queues[index].try_push(message):
                    touched.add(index)
                    continue
                log.error("could not report the lost task %s: its result queue is full", key)
            except SharedMemoryCorruptError as exc:
                # the callers learn it from the flow going down instead
                self.shared_memory_corrupt(f"{exc} (found by process {os.getpid()})")
                return
            except Exception:
                log.exception("could not report the lost task %s", key)
        for index in touched:
            topology.notify(index)
        if worker.spec.own_arena < len(topology.arenas):
            topology.arenas[worker.spec.own_arena].free_keys(keys)

    def unwedge_queues(self) -> None:
        """Every monitor tick: a worker killed in the instant between
        claiming room in a queue and publishing its message leaves that queue
        stuck at it. After a death, a head seen unpublished on two ticks in a
        row is such a leftover, and becomes a message consumers skip."""
        if not self._deaths:
            return
        queues = self._topology.queues
        seen = {
            (index, ring, head)
            for index, queue in enumerate(queues)
            for ring, head in queue.unpublished_heads()
        }
        for index, ring, head in seen & self._unpublished:
            if queues[index].skip_abandoned(ring, head):
                log.warning("Skipped a message a dead worker left unfinished in queue %d", index)
        self._unpublished = seen

    def segments_corrupt(self, step_name: str) -> None:
        """A worker found the flow's shared memory corrupt: every respawn
        would too, so the step is down at once (the flow may heal)."""
        self.shared_memory_corrupt(
            f"a worker of {step_name} found the flow's shared memory corrupt"
        )

    def shared_memory_corrupt(self, reason: str) -> None:
        """The flow's shared memory holds what no process of it writes (a
        worker or this process found so, reading it): nothing in it can be
        trusted, so the flow stops serving from it at once (it may heal)."""
        self.corrupt = True
        self._down(reason, SharedMemoryCorruptError)

    def step_down(self, step_name: str, why: str) -> None:
        """A step cannot serve (its workers keep dying): the flow stops
        serving; ``stop()`` then ``start()`` gives it fresh segments and
        workers."""
        self._down(f"{step_name} is down: {why} (see the log)", FlowError)

    def _down(self, reason: str, error: type[FlowError]) -> None:
        if self.broken is not None:
            return
        self.broken = reason
        log.error("%s", reason)
        self._fail_callers(error(reason))
