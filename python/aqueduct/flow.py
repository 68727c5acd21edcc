"""The Flow: a pipeline of steps, each run by worker processes.

Tasks travel through shared-memory queues of the Rust core
(``aqueduct._core``); the parent learns of results through an eventfd
registered with its asyncio loop, so nothing polls.
"""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from enum import Enum
from typing import Any, Literal

from . import _core
from ._flow_metrics import snapshot
from ._healing import Healer
from ._protocol import MAX_CLIENTS
from ._recovery import Recovery
from ._rendezvous import Announcement, Rendezvous
from ._seat import Seat
from ._shm import DEFAULT_SHM_SIZE, THRESHOLD, _set_parent_arena, forget_arenas
from ._supervisor import Supervisor
from ._topology import Topology, spin_us
from .exceptions import (
    FlowError,
    MPStartMethodValueError,
    NotRunningError,
    SharedMemoryCorruptError,
    TaskTimeoutError,
)
from .handler import BaseTaskHandler
from .logger import log
from .metrics import Collector, Exporter, FlowMetrics, MetricsTypes
from .step import FlowStep
from .task import BaseTask

__all__ = ["Flow", "FlowState", "FlowStep"]

START_METHODS = ("spawn", "fork", "forkserver")
#: How long a worker with an empty queue may spin before it sleeps (see
#: ``_topology.spin_us``); AQUEDUCT_SPIN_US overrides it, 0 turns it off.
DEFAULT_SPIN_US = _core.DEFAULT_SPIN_US
#: How long stop() lets workers exit by themselves before terminating them.
WORKER_EXIT_TIMEOUT = 5.0


def _step_name(handler: Any, number: int) -> str:
    get_name = getattr(handler, "get_step_name", None)
    if callable(get_name):
        return str(get_name(number))
    return str(BaseTaskHandler.get_step_name.__func__(type(handler), number))  # type: ignore[attr-defined]


def _check_arguments(
    queue_size: int | None,
    queue_priorities: int,
    mp_start_method: str,
    shm_size: int,
    queue_full: str,
    clients: int,
) -> None:
    if mp_start_method not in START_METHODS:
        raise MPStartMethodValueError(
            f"mp_start_method must be one of {START_METHODS}, got {mp_start_method!r}"
        )
    if queue_size is not None and int(queue_size) < 1:
        raise ValueError(f"queue_size must be >= 1 or None, got {queue_size}")
    if not 1 <= int(queue_priorities) <= 64:
        raise ValueError(f"queue_priorities must be in 1..64, got {queue_priorities}")
    if queue_full not in ("wait", "reject"):
        raise ValueError(f"queue_full must be 'wait' or 'reject', got {queue_full!r}")
    if not 1 <= int(clients) <= MAX_CLIENTS:
        raise ValueError(f"clients must be in 1..{MAX_CLIENTS}, got {clients}")
    if int(shm_size) < THRESHOLD:
        raise ValueError(f"shm_size must be >= {THRESHOLD} bytes, got {shm_size}")


class FlowState(Enum):
    RUNNING = "running"
    STARTING = "starting"
    STOPPING = "stopping"
    STOPPED = "stopped"
    STEPS_INITIALIZED = "steps_initialized"


class Flow:
    """A pipeline of :class:`FlowStep` run by worker processes.

    ``queue_size`` bounds how many tasks each step's queue holds (default: as
    many as its shared-memory ring fits); a caller meeting a full queue waits
    for room until its own timeout, or, with ``queue_full="reject"``, gets
    ``QueueFullError`` at once (for servers that prefer a fast 503).
    ``queue_priorities`` is the number of priority levels; ``task.priority``
    (clamped to ``0..queue_priorities-1``) picks one, higher served first.
    Workers start with ``mp_start_method``: ``'spawn'`` (the default) and
    ``'forkserver'`` start fresh interpreters on aqueduct's own entry point,
    which never run the user's script; ``'fork'`` forks, as upstream did.

    The flow's jobs live in rooms of their own: shared memory and its layout
    in ``Topology``, this process's calls in ``Seat`` (its ``Client``, and
    in a forked process its view of the owner), workers in ``Supervisor``,
    their deaths in ``Recovery``, heals in ``Healer`` (forked clients follow
    through ``Rendezvous``), metrics in ``_flow_metrics``; this class ties
    them to the flow's states.
    """

    def __init__(
        self,
        *steps: FlowStep | BaseTaskHandler,
        metrics_enabled: bool = True,
        metrics_collector: Collector | None = None,
        metrics_exporter: Exporter | None = None,
        queue_size: int | None = None,
        queue_priorities: int = 1,
        mp_start_method: Literal["fork", "spawn", "forkserver"] = "spawn",
        shm_size: int = DEFAULT_SHM_SIZE,
        queue_full: Literal["wait", "reject"] = "wait",
        clients: int = 1,
    ) -> None:
        _check_arguments(
            queue_size, queue_priorities, mp_start_method, shm_size, queue_full, clients
        )
        self._steps: list[FlowStep] = [
            step if isinstance(step, FlowStep) else FlowStep(step) for step in steps
        ]
        self._step_names = [
            _step_name(step.handler, number) for number, step in enumerate(self._steps, 1)
        ]
        self._queue_size = queue_size
        self._reject_when_full = queue_full == "reject"
        self._clients = int(clients)
        self._shm_size = int(shm_size)
        self._queue_priorities = int(queue_priorities)
        self._mp_start_method = mp_start_method
        self._metrics_collector = metrics_collector or Collector()
        if not metrics_enabled:
            log.warning("Metrics collecting is disabled")
            self._metrics_collector = Collector(collectible_metrics=[])
        self._collect_metrics = self._metrics_collector.is_collectible(MetricsTypes.TASK_TIMERS)
        self._metrics_exporter = metrics_exporter

        self._state = FlowState.STOPPED
        self._owner_pid = os.getpid()  # the process that runs the workers
        self._spin_us = spin_us()
        self._topology: Topology | None = None
        self._generation = 0  # which set of segments: a heal moves to the next
        self._supervisor: Supervisor | None = None
        self._recovery: Recovery | None = None
        self._healer = Healer()
        # with several clients: where processes forked from the owner follow
        # the flow onto fresh segments (see _rendezvous)
        self._rendezvous: Rendezvous | None = None
        self._rendezvous_address: str | None = None
        # this process's client and view of the owner (a process forked from
        # this one gets a seat of its own: see _forget_clients)
        self._seat = Seat(self, forked=False)
        # the HTTP server's (task_from_request, response_from_task) per route
        self._http: list[tuple[Any, Any]] | None = None
        # how earlier clients of this process ended their tasks
        self._counts = dict.fromkeys(("done", "failed", "timeout", "cancelled"), 0)
        _FLOWS.add(self)

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> FlowState:
        return self._state

    @property
    def is_running(self) -> bool:
        return self._state == FlowState.RUNNING

    @property
    def failure(self) -> str | None:
        """Why the flow cannot serve although it runs (a step whose workers
        keep dying; in a process forked from the one that started it, that
        one's death), or None. Integrations stop the app on it."""
        seat = self._seat.failure
        if seat is not None:
            return seat
        if self._recovery is None or self._healer.can_heal(self):
            return None  # the next call heals it
        return self._recovery.broken

    @property
    def task_counts(self) -> dict[str, int]:
        """How the tasks given to ``process`` ended: ``done``, ``failed``
        (handler error, dead worker, ...), ``timeout`` and ``cancelled`` (the
        caller was cancelled); workers skip timed-out and cancelled tasks."""
        counts = dict(self._counts)
        if self._seat.client is not None:
            for name, value in self._seat.client.core.counts().items():
                counts[name] += value
        return counts

    @property
    def shm_used(self) -> int:
        """Bytes of shared memory held by buffers now: in the workers' arenas
        of this flow and in its clients' arenas (every flow has its own)."""
        return self._topology.shm_used if self._topology is not None else 0

    @property
    def are_steps_initialized(self) -> bool:
        return self._state == FlowState.STEPS_INITIALIZED

    # -- start ---------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Starts every worker and waits until each handler's ``on_start`` has
        finished, at most ``timeout`` seconds (``FlowStartTimeoutError``)."""
        if self._state == FlowState.RUNNING:
            log.info("Flow is already running")
            return
        if self._state != FlowState.STEPS_INITIALIZED:
            self.init_processes(timeout)
        self.start_inited()

    def init_processes(self, timeout: float | None = None) -> None:
        """Starts the worker processes and waits for their ``on_start``."""
        if self._state != FlowState.STOPPED:
            raise FlowError(f"cannot init processes of a flow in state {self._state.value}")
        log.info("Flow is starting")
        self._state = FlowState.STARTING
        try:
            supervisor = self._spawn_workers(timeout)
        except BaseException:
            self._kill_workers()
            self._forget_segments()
            self._state = FlowState.STOPPED
            raise
        supervisor.start_monitor()
        if self._clients > 1 and self._topology is not None:
            self._rendezvous = Rendezvous(on_report=self._reported_corrupt)
            self._rendezvous_address = self._rendezvous.address
            self._rendezvous.announce(self._generation, self._topology)
        self._state = FlowState.STEPS_INITIALIZED

    def start_inited(self) -> None:
        """Makes a flow whose processes are initialised accept tasks."""
        if self._state != FlowState.STEPS_INITIALIZED:
            raise FlowError(f"cannot start a flow in state {self._state.value}")
        self._state = FlowState.RUNNING
        log.info("Flow was started")

    def _spawn_workers(self, timeout: float | None) -> Supervisor:
        spin = self._spin_us
        self._generation += 1
        topology = self._topology = Topology.create(
            steps=len(self._steps),
            clients=self._clients,
            workers=sum(step.nprocs for step in self._steps),
            priorities=self._queue_priorities,
            queue_size=self._queue_size,
            shm_size=self._shm_size,
            # metrics for each step and the result queue, or none at all
            metric_steps=len(self._steps) + 1 if self._collect_metrics else 0,
            spin=spin,
        )
        self._owner_pid = os.getpid()
        _set_parent_arena(topology.arenas[0])  # share_value() allocates there until then
        self._recovery = Recovery(topology, self._serving, self._fail_callers)
        supervisor = Supervisor(self._mp_start_method, topology.control, self._recovery)
        self._supervisor = supervisor
        deadline = None if timeout is None else time.monotonic() + timeout
        supervisor.start_all(
            topology.worker_specs(self._steps, self._step_names, spin, self._http),
            [step.on_start_wait for step in self._steps],
            deadline,
        )
        return supervisor

    def _serving(self) -> bool:
        return self._state in (FlowState.RUNNING, FlowState.STEPS_INITIALIZED)

    def _fail_callers(self, error: FlowError) -> None:
        """Any thread: the flow stopped serving. Every task this process
        waits for fails; in the owner, forked clients are told, and corrupt
        shared memory starts a heal."""
        self._seat.fail_all(error)
        if os.getpid() != self._owner_pid:
            return
        corrupt = isinstance(error, SharedMemoryCorruptError)
        heals = corrupt and self._healer.can_heal(self)
        if self._rendezvous is not None:
            down = Announcement("down", reason=str(error), corrupt=corrupt, final=not heals)
            self._rendezvous.publish(down)
        if heals:
            self._healer.start(self)

    def _reported_corrupt(self, reason: str) -> None:
        """A forked client found the shared memory corrupt (rendezvous thread)."""
        if self._recovery is not None:
            self._recovery.shared_memory_corrupt(reason)

    def _broken(self) -> bool:
        return self._recovery is not None and self._recovery.broken is not None

    # -- processing ----------------------------------------------------------

    async def process(self, task: BaseTask, timeout_sec: float = 5.0) -> bool:
        """Runs ``task`` through the steps; on return the handlers' fields are
        set on ``task`` itself. Raises ``TaskTimeoutError`` (a ``FlowError``)
        when ``timeout_sec`` passes, ``HandlerError`` when a handler raised,
        ``NotRunningError`` when the flow is not running."""
        if self._state is not FlowState.RUNNING:
            raise NotRunningError(f"Flow is not running (state: {self._state.value})")
        if not timeout_sec or timeout_sec <= 0:
            raise ValueError(f"timeout_sec must be > 0, got {timeout_sec!r}")
        called = time.monotonic()
        # (no local refers to the recovery: a traceback through this frame
        # would keep the segments it knows mapped until a garbage collection)
        healed = self._healer.healing or self._broken()
        if healed:
            await self._healer.heal_or_raise(self, timeout_sec)
        loop = asyncio.get_running_loop()
        client = self._seat.ready_client(loop)  # the common case: nothing to wait for
        followed = False
        if client is None:
            client, followed = await self._seat.client_for(loop, timeout_sec)
        if healed or followed:  # what waiting for a heal took counts against the timeout
            timeout_sec -= time.monotonic() - called
            if timeout_sec <= 0:
                raise TaskTimeoutError("the call's timeout passed while the flow healed")
        try:
            future = client.core.submit(task, timeout_sec)
        except SharedMemoryCorruptError as exc:
            self._seat.shared_memory_corrupt(str(exc))
            raise
        if future is None:
            return True  # no step's condition holds: nothing to do
        try:
            await future
        except asyncio.CancelledError:
            client.core.cancel(future)  # workers skip it instead of handling it
            if self._state in (FlowState.STOPPING, FlowState.STOPPED):
                raise FlowError("Task was cancelled: the flow is stopping") from None
            raise
        return True

    # -- stop ----------------------------------------------------------------

    async def stop(self, graceful: bool = True) -> None:
        """Stops the flow. ``graceful``: let queued tasks finish (each within
        its own timeout) first; otherwise fail them at once with ``FlowError``.
        Worker processes are gone when this returns."""
        if not self._serving():
            log.info("Flow is not running")
            return
        seat = self._seat
        if os.getpid() != self._owner_pid:
            # a forked client: its own tasks end here; the workers belong to
            # the process that started the flow, which stops them
            seat.close(FlowError("Flow was stopped"))
            self._seat = Seat(self, forked=True)
            self._state = FlowState.STOPPED
            return
        try:
            await self._healer.wait()  # a heal under way ends first
        except FlowError:
            return  # it failed: the flow is stopped already
        self._state = FlowState.STOPPING
        log.info("Flow is stopping")
        client = seat.client
        if client is not None:
            pending = [f for f in client.core.futures() if not f.done()]
            if graceful and pending:
                await asyncio.wait(pending)  # each task has its own timeout
            client.core.fail_all(FlowError("Flow was stopped"))
        if self._supervisor is not None:
            self._supervisor.stop_respawning()
        if self._topology is not None:
            self._topology.close()
        if self._supervisor is not None:
            await self._supervisor.join(WORKER_EXIT_TIMEOUT)
            self._supervisor = None
        seat.drop_client()
        if self._rendezvous is not None:
            self._rendezvous.close()
            self._rendezvous = self._rendezvous_address = None
        self._forget_segments()
        self._state = FlowState.STOPPED
        log.info("Flow was stopped")

    def _kill_workers(self) -> None:
        if self._supervisor is not None:
            self._supervisor.kill_all()
            self._supervisor = None

    def _forget_segments(self) -> None:
        if self._topology is not None:
            forget_arenas(self._topology.arenas)
        self._topology = self._recovery = None

    # -- metrics -----------------------------------------------------------------

    def metrics(self) -> FlowMetrics | None:
        """A snapshot of what the flow recorded since it started (None when
        it is not started or metrics are off): per step handle, batch and
        queue times, batch sizes, tasks handled / expired / cancelled, queue
        sizes; how tasks ended; resident memory per process."""
        topology, supervisor = self._topology, self._supervisor
        if not self._collect_metrics or topology is None or supervisor is None:
            return None
        return snapshot(
            control=topology.control,
            step_names=self._step_names,
            queues=topology.queues,
            collector=self._metrics_collector,
            workers=supervisor.workers,
            task_counts=lambda: self.task_counts,
        )


#: Every Flow of this process, to forget their clients in a forked child.
_FLOWS: weakref.WeakSet[Flow] = weakref.WeakSet()


def _forget_clients() -> None:
    """In a process just forked: the parent's clients are not ours (their
    loop, futures and result queues stay the parent's); a flow used here
    takes a client slot of its own on its first ``process`` call, and
    watches (and follows) the flow's owner."""
    for flow in list(_FLOWS):
        forked = flow._serving() and flow._owner_pid != os.getpid()
        flow._seat = Seat(flow, forked=forked)
        if flow._rendezvous is not None:
            flow._rendezvous.forget()  # the owner's; its thread did not fork
            flow._rendezvous = None


os.register_at_fork(after_in_child=_forget_clients)
