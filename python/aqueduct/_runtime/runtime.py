"""A flow while it exists in a process: the one owner of everything that
changes as it starts, serves, heals and stops — its state, its shared memory
(``Topology``), its workers (``Supervisor``), their deaths (``Recovery``),
heals (``Healer``, and ``Rendezvous`` for processes forked from the owner),
this process's client (``Seat``) and how earlier clients ended their tasks.
``Flow`` is the user's face of it; the HTTP server and ``aqueduct.testing``
reach it through ``aqueduct.flow.runtime_of``.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from typing import Any

from .._ipc.shm import forget_arenas, set_parent_arena
from .._ipc.topology import Topology
from ..exceptions import FlowError, NotRunningError, SharedMemoryCorruptError
from ..handler import BaseTaskHandler
from ..logger import log
from ..metrics import FlowMetrics, MetricsTypes
from .config import FlowConfig
from .healing import Healer
from .metrics import snapshot
from .recovery import Recovery
from .rendezvous import Announcement, Rendezvous
from .replacement import replace_workers
from .scaling import Scaler
from .seat import Seat
from .specs import WorkerSpecs, pickled_handler, slot_ranges
from .state import FlowState
from .supervisor import Supervisor

__all__ = ["FlowRuntime"]

#: How long stop() lets workers exit by themselves before terminating them.
WORKER_EXIT_TIMEOUT = 5.0
#: How long the old workers get to exit before they are killed, in a heal.
OLD_WORKERS_GRACE = 1.0
#: Bound on starting the fresh workers of a heal (their ``on_start`` runs again).
RESTART_TIMEOUT = 120.0
#: Bound on a handler replacement's new workers starting, by default.
REPLACE_TIMEOUT = 120.0
#: How long the old workers of a replacement get to finish their tasks.
DRAIN_TIMEOUT = 60.0


class FlowRuntime:
    """One flow's changing state, in one process (see the module docs)."""

    def __init__(self, config: FlowConfig) -> None:
        self.config = config
        self.state = FlowState.STOPPED
        #: The process that runs the workers (a forked process is a client).
        self.owner_pid = os.getpid()
        self.topology: Topology | None = None
        #: Which set of segments: a heal moves to the next.
        self.generation = 0
        self.supervisor: Supervisor | None = None
        #: Each step's handler now (``replace_handler`` changes it).
        self.handlers = [step.handler for step in config.steps]
        #: What workers on the current segments are started with.
        self.specs: WorkerSpecs | None = None
        self.recovery: Recovery | None = None
        self.healer = Healer(self)
        #: With several clients: where processes forked from the owner
        #: follow the flow onto fresh segments.
        self.rendezvous: Rendezvous | None = None
        self.rendezvous_address: str | None = None
        #: This process's client and view of the owner.
        self.seat = Seat(self, forked=False)
        #: The HTTP server's (task_from_request, response_from_task) per route.
        self.http_routes: list[tuple[Any, Any, Any, bool]] | None = None
        self._counts = dict.fromkeys(("done", "failed", "timeout", "cancelled"), 0)
        _RUNTIMES.add(self)

    # -- what it is now ------------------------------------------------------------

    def serving(self) -> bool:
        return self.state in (FlowState.RUNNING, FlowState.STEPS_INITIALIZED)

    def broken(self) -> bool:
        return self.recovery is not None and self.recovery.broken is not None

    @property
    def failure(self) -> str | None:
        """Why the flow cannot serve although it runs, or None."""
        seat = self.seat.failure
        if seat is not None:
            return seat
        if self.recovery is None or self.healer.can_heal():
            return None  # the next call heals it
        return self.recovery.broken

    @property
    def task_counts(self) -> dict[str, int]:
        counts = dict(self._counts)
        if self.seat.client is not None:
            for name, value in self.seat.client.core.counts().items():
                counts[name] += value
        return counts

    def add_counts(self, counts: dict[str, int]) -> None:
        """How a client of this process that closed ended its tasks."""
        for name, value in counts.items():
            self._counts[name] += value

    @property
    def shm_used(self) -> int:
        return self.topology.shm_used if self.topology is not None else 0

    # -- starting ------------------------------------------------------------------

    def init_processes(self, timeout: float | None) -> None:
        if self.state != FlowState.STOPPED:
            raise FlowError(f"cannot init processes of a flow in state {self.state.value}")
        log.info("Flow is starting")
        self.state = FlowState.STARTING
        try:
            supervisor = self.spawn(timeout)
        except BaseException:
            self.kill_workers()
            self.retire_segments()
            self.state = FlowState.STOPPED
            raise
        supervisor.start_monitor()
        if self.config.clients > 1 and self.topology is not None:
            self.rendezvous = Rendezvous(on_report=self.reported_corrupt)
            self.rendezvous_address = self.rendezvous.address
            self.rendezvous.announce(self.generation, self.topology)
        self.state = FlowState.STEPS_INITIALIZED

    def start_inited(self) -> None:
        if self.state != FlowState.STEPS_INITIALIZED:
            raise FlowError(f"cannot start a flow in state {self.state.value}")
        self.state = FlowState.RUNNING
        log.info("Flow was started")

    def spawn(self, timeout: float | None) -> Supervisor:
        """Fresh segments and workers (waits for their ``on_start``)."""
        config = self.config
        self.generation += 1
        topology = self.topology = Topology.create(
            steps=len(config.steps),
            clients=config.clients,
            workers=sum(len(slots) for slots in slot_ranges(config.steps)),
            priorities=config.priorities,
            queue_size=config.queue_size,
            shm_size=config.shm_size,
            # metrics for each step and the result queue, or none at all (the
            # steps' schedules are there either way)
            steps_metered=config.collects_metrics,
            spin=config.spin_us,
        )
        self.owner_pid = os.getpid()
        set_parent_arena(topology.arenas[0])  # share_value() allocates there until then
        self.recovery = Recovery(topology, self.serving, self.fail_callers)
        supervisor = self.supervisor = Supervisor(
            config.start_method, topology.control, self.recovery
        )
        supervisor.steps = len(config.steps)
        deadline = None if timeout is None else time.monotonic() + timeout
        specs = self.specs = WorkerSpecs(
            topology,
            config.steps,
            config.step_names,
            self.handlers,
            config.spin_us,
            self.http_routes,
            tracing=config.tracing,
            objectives=config.objectives,
        )
        supervisor.start_all(
            specs.initial(), [step.on_start_wait for step in config.steps], deadline
        )
        if any(step.elastic is not None for step in config.steps):
            supervisor.on_scale = Scaler(
                supervisor, specs, topology.queues, topology.control, config.steps
            )
        return supervisor

    # -- changing a step while it serves ----------------------------------------------

    async def replace_handler(
        self, index: int, handler: BaseTaskHandler, start_timeout: float | None
    ) -> None:
        """Step ``index`` runs ``handler`` from now on (see ``replacement``)."""
        if self.state != FlowState.RUNNING:
            raise NotRunningError(f"cannot replace a handler of a flow in state {self.state.value}")
        if os.getpid() != self.owner_pid:
            raise FlowError("only the process that started the flow can replace its handlers")
        await self.healer.wait()
        supervisor, specs = self.supervisor, self.specs
        if supervisor is None or specs is None:
            raise FlowError("the flow has no workers: it is not running")
        blob = pickled_handler(handler, self.config.step_names[index])
        now = time.monotonic()
        start_by = now + (REPLACE_TIMEOUT if start_timeout is None else start_timeout)
        await asyncio.to_thread(
            replace_workers, supervisor, specs, index, blob, start_by, start_by + DRAIN_TIMEOUT
        )
        self.handlers[index] = handler

    # -- when things go wrong ---------------------------------------------------------

    def fail_callers(self, error: FlowError) -> None:
        """Any thread: the flow stopped serving. Every task this process
        waits for fails; in the owner, forked clients are told, and corrupt
        shared memory starts a heal."""
        self.seat.fail_all(error)
        if os.getpid() != self.owner_pid:
            return
        corrupt = isinstance(error, SharedMemoryCorruptError)
        heals = corrupt and self.healer.can_heal()
        if self.rendezvous is not None:
            down = Announcement("down", reason=str(error), corrupt=corrupt, final=not heals)
            self.rendezvous.publish(down)
        if heals:
            self.healer.start()

    def reported_corrupt(self, reason: str) -> None:
        """A client found the shared memory corrupt (any thread)."""
        if self.recovery is not None:
            self.recovery.shared_memory_corrupt(reason)

    def restart_on_fresh_segments(self) -> None:
        """A heal (in its own thread): the old workers and segments go, new
        ones come; forked clients follow, keeping their client slots."""
        old = self.topology
        claimed = old.control.clients_claimed() if old is not None else 0
        self.seat.drop_client()  # its tasks have failed already
        supervisor = self.supervisor
        if supervisor is not None:
            supervisor.stop_respawning()
        if old is not None:
            old.close()
        if supervisor is not None:
            supervisor.join_blocking(OLD_WORKERS_GRACE)
            self.supervisor = None
        self.retire_segments()
        fresh = self.spawn(RESTART_TIMEOUT)
        topology = self.topology
        assert topology is not None
        topology.control.reserve_clients(claimed)
        fresh.start_monitor()
        if self.rendezvous is not None:
            self.rendezvous.announce(self.generation, topology)

    def give_up(self, error: FlowError) -> None:
        """A heal failed: the flow stays stopped, and forked clients know."""
        self.kill_workers()
        self.retire_segments()
        self.state = FlowState.STOPPED
        if self.rendezvous is not None:
            self.rendezvous.publish(Announcement("down", reason=str(error), final=True))

    def moved(self, topology: Topology, generation: int) -> None:
        """A forked client adopted the segments its owner moved the flow to."""
        self.topology, self.generation = topology, generation

    # -- stopping ------------------------------------------------------------------

    async def stop(self, graceful: bool) -> None:
        if not self.serving():
            log.info("Flow is not running")
            return
        seat = self.seat
        if os.getpid() != self.owner_pid:
            # a forked client: its own tasks end here; the workers belong to
            # the process that started the flow, which stops them
            seat.close(FlowError("Flow was stopped"))
            self.seat = Seat(self, forked=True)
            self.state = FlowState.STOPPED
            return
        try:
            await self.healer.wait()  # a heal under way ends first
        except FlowError:
            return  # it failed: the flow is stopped already
        self.state = FlowState.STOPPING
        log.info("Flow is stopping")
        client = seat.client
        if client is not None:
            pending = [f for f in client.core.futures() if not f.done()]
            if graceful and pending:
                await asyncio.wait(pending)  # each task has its own timeout
            client.core.fail_all(FlowError("Flow was stopped"))
        if self.supervisor is not None:
            self.supervisor.stop_respawning()
        if self.topology is not None:
            self.topology.close()
        if self.supervisor is not None:
            await self.supervisor.join(WORKER_EXIT_TIMEOUT)
            self.supervisor = None
        seat.drop_client()
        if self.rendezvous is not None:
            self.rendezvous.close()
            self.rendezvous = self.rendezvous_address = None
        self.retire_segments()
        self.state = FlowState.STOPPED
        log.info("Flow was stopped")

    def kill_workers(self) -> None:
        if self.supervisor is not None:
            self.supervisor.kill_all()
            self.supervisor = None

    def retire_segments(self) -> None:
        """This set of segments serves no more (the workers are gone)."""
        if self.topology is not None:
            forget_arenas(self.topology.arenas)
        self.topology = self.recovery = self.specs = None

    # -- metrics --------------------------------------------------------------------

    def metrics(self) -> FlowMetrics | None:
        topology, supervisor = self.topology, self.supervisor
        if not self.config.collects_metrics or topology is None or supervisor is None:
            return None
        collector = self.config.collector
        counts = self.task_counts if collector.is_collectible(MetricsTypes.TASKS) else {}
        return snapshot(
            control=topology.control,
            step_names=list(self.config.step_names),
            queues=topology.queues,
            collector=collector,
            workers=supervisor.workers,
            task_counts=counts,
        )

    # -- in a forked process --------------------------------------------------------

    def forget_after_fork(self) -> None:
        """In a process just forked from this one: the parent's client is not
        ours (its loop, futures and result queue stay the parent's); a flow
        used here takes a client slot of its own on its first call, and
        watches (and follows) the flow's owner."""
        forked = self.serving() and self.owner_pid != os.getpid()
        self.seat = Seat(self, forked=forked)
        if self.rendezvous is not None:
            self.rendezvous.forget()  # the owner's; its thread did not fork
            self.rendezvous = None


#: Every flow of this process, to forget their clients in a forked child.
_RUNTIMES: weakref.WeakSet[FlowRuntime] = weakref.WeakSet()


def _forget_clients() -> None:
    for runtime in list(_RUNTIMES):
        runtime.forget_after_fork()


os.register_at_fork(after_in_child=_forget_clients)
