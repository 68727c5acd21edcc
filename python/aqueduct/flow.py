"""The Flow: a pipeline of steps, each run by worker processes.

Tasks travel through shared-memory queues of the Rust core
(``aqueduct._core``); the parent learns of results through an eventfd
registered with its asyncio loop, so nothing polls.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import weakref
from enum import Enum
from multiprocessing.connection import wait
from typing import Any, Literal

import cloudpickle

from . import _core
from ._client import Client
from ._protocol import CLIENT_SHIFT, KIND_ERROR, MAX_CLIENTS, WorkerSpec, encode_error
from ._shm import DEFAULT_SHM_SIZE, THRESHOLD, _set_parent_arena, parent_arena
from ._supervisor import Supervisor, WorkerProcess, with_slot
from .exceptions import (
    FlowError,
    MPStartMethodValueError,
    NotRunningError,
    WorkerDiedError,
)
from .handler import BaseTaskHandler
from .logger import log
from .metrics import (
    MAIN_PROCESS,
    Collector,
    Exporter,
    FlowMetrics,
    Histogram,
    MetricsTypes,
    StepMetrics,
)
from .step import FlowStep
from .task import BaseTask

__all__ = ["Flow", "FlowState", "FlowStep"]

START_METHODS = ("spawn", "fork", "forkserver")
#: Slots per priority ring of every queue (x SLOT_BYTES = 4 MiB a ring); a
#: message may take up to half the ring.
QUEUE_SLOTS = 16_384
SLOT_BYTES = 256
#: How long a worker with an empty queue may spin (yielding the core between
#: checks) before it sleeps on its futex, while spinning pays (see the core's
#: spin.rs); AQUEDUCT_SPIN_US overrides it, 0 turns spinning off.
DEFAULT_SPIN_US = _core.DEFAULT_SPIN_US
#: How long the parent, with a single task in flight, spins on the result
#: queue before going back to its event loop (a kernel wake-up costs more).
PARENT_SPIN_BASE_US = 40
PARENT_SPIN_PER_STEP_US = 30
#: How long stop() lets workers exit by themselves before terminating them.
WORKER_EXIT_TIMEOUT = 5.0


def _spin_us() -> int:
    try:
        return max(0, int(os.environ.get("AQUEDUCT_SPIN_US", DEFAULT_SPIN_US)))
    except ValueError:
        return DEFAULT_SPIN_US


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _step_name(handler: Any, number: int) -> str:
    get_name = getattr(handler, "get_step_name", None)
    if callable(get_name):
        return str(get_name(number))
    return str(BaseTaskHandler.get_step_name.__func__(type(handler), number))  # type: ignore[attr-defined]


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
    """

    def __init__(
        self,
        *steps: FlowStep | BaseTaskHandler,
        metrics_enabled: bool = True,
        metrics_collector: Any = None,
        metrics_exporter: Any = None,
        queue_size: int | None = None,
        queue_priorities: int = 1,
        mp_start_method: Literal["fork", "spawn", "forkserver"] = "spawn",
        shm_size: int = DEFAULT_SHM_SIZE,
        queue_full: Literal["wait", "reject"] = "wait",
        clients: int = 1,
    ) -> None:
        if mp_start_method not in START_METHODS:
            raise MPStartMethodValueError(
                f"mp_start_method must be one of {START_METHODS}, got {mp_start_method!r}"
            )
        if queue_size is not None and int(queue_size) < 1:
            raise ValueError(f"queue_size must be >= 1 or None, got {queue_size}")
        if not 1 <= int(queue_priorities) <= 64:
            raise ValueError(f"queue_priorities must be in 1..64, got {queue_priorities}")
        self._steps: list[FlowStep] = [
            step if isinstance(step, FlowStep) else FlowStep(step) for step in steps
        ]
        self._step_names = [
            _step_name(step.handler, number) for number, step in enumerate(self._steps, 1)
        ]
        self._queue_size = queue_size
        if queue_full not in ("wait", "reject"):
            raise ValueError(f"queue_full must be 'wait' or 'reject', got {queue_full!r}")
        self._reject_when_full = queue_full == "reject"
        if not 1 <= int(clients) <= MAX_CLIENTS:
            raise ValueError(f"clients must be in 1..{MAX_CLIENTS}, got {clients}")
        self._clients = int(clients)
        # this process's client slot, taken on its first process() call (a
        # process forked from this one takes its own: see _forget_clients)
        self._client: Client | None = None
        self._owner_pid = os.getpid()  # the process that runs the workers
        if int(shm_size) < THRESHOLD:
            raise ValueError(f"shm_size must be >= {THRESHOLD} bytes, got {shm_size}")
        self._shm_size = int(shm_size)
        self._queue_priorities = int(queue_priorities)
        self._mp_start_method = mp_start_method
        self._metrics_collector = metrics_collector or Collector()
        if not metrics_enabled:
            log.warning("Metrics collecting is disabled")
            self._metrics_collector = Collector(collectible_metrics=[])
        self._collect_metrics = self._metrics_collector.is_collectible(MetricsTypes.TASK_TIMERS)
        self._metrics_exporter: Exporter | None = metrics_exporter
        self._export_task: asyncio.Task[None] | None = None

        self._state = FlowState.STOPPED
        self._supervisor: Supervisor | None = None
        self._control: Any = None
        self._broken: str | None = None
        self._deaths = 0  # worker deaths seen (enables the unwedging check)
        self._unpublished: set[tuple[int, int, int]] = set()
        # how earlier clients of this process ended their tasks
        self._counts = dict.fromkeys(("done", "failed", "timeout", "cancelled"), 0)
        self._queues: list[Any] = []  # step input queues, then a result queue per client
        self._doorbells: list[Any] = []
        self._arenas: list[Any] = []
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
        keep dying), or None. Integrations stop the app on it."""
        return self._broken

    @property
    def task_counts(self) -> dict[str, int]:
        """How the tasks given to ``process`` ended: ``done``, ``failed``
        (handler error, dead worker, ...), ``timeout`` and ``cancelled`` (the
        caller was cancelled); workers skip timed-out and cancelled tasks."""
        counts = dict(self._counts)
        if self._client is not None:
            for name, value in self._client.core.counts().items():
                counts[name] += value
        return counts

    @property
    def shm_used(self) -> int:
        """Bytes of shared memory held by buffers now: in the workers' arenas
        of this flow and in this process's arena (shared by its flows)."""
        return sum(arena.used for arena in self._arenas)

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
            self._spawn_workers(timeout)
        except BaseException:
            self._kill_workers()
            self._release_queues()
            self._state = FlowState.STOPPED
            raise
        assert self._supervisor is not None
        self._supervisor.start_monitor()
        self._state = FlowState.STEPS_INITIALIZED

    def start_inited(self) -> None:
        """Makes a flow whose processes are initialised accept tasks."""
        if self._state != FlowState.STEPS_INITIALIZED:
            raise FlowError(f"cannot start a flow in state {self._state.value}")
        self._state = FlowState.RUNNING
        log.info("Flow was started")

    def _spawn_workers(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        spin = _spin_us()
        slots = QUEUE_SLOTS
        max_messages = self._queue_size or 0
        self._queues = [
            _core.Queue.create(self._queue_priorities, slots, SLOT_BYTES, max_messages, spin)
            for _ in self._steps
        ]
        for _ in range(self._clients):  # a result queue and a doorbell per client
            self._queues.append(_core.Queue.create(1, slots, SLOT_BYTES, 0, spin))
            self._doorbells.append(_core.Doorbell())
        nworkers = sum(step.nprocs for step in self._steps)
        # metrics for each step and the result queue, or none at all
        metric_steps = len(self._steps) + 1 if self._collect_metrics else 0
        self._control = _core.Control.create(nworkers, metric_steps)
        self._arenas = [parent_arena(self._shm_size)] + [
            _core.SharedArena.create(self._shm_size, True)
            for _ in range(self._clients - 1 + nworkers)
        ]
        self._owner_pid = os.getpid()
        self._client = None  # a client slot is taken on the first process() call
        try:
            conditions_blob = cloudpickle.dumps([s.handle_condition for s in self._steps])
        except Exception as exc:
            raise FlowError(f"cannot pickle the steps' handle_condition: {exc}") from exc
        self._supervisor = Supervisor(
            self._mp_start_method,
            self._control,
            self._on_worker_death,
            self._on_step_down,
            self._unwedge_queues,
        )
        slot = 0
        for index, step in enumerate(self._steps):
            try:
                handler_blob = cloudpickle.dumps(step.handler)
            except Exception as exc:
                name = self._step_names[index]
                raise FlowError(f"cannot pickle handler of {name}: {exc}") from exc
            spec = WorkerSpec(
                step_index=index,
                step_name=self._step_names[index],
                handler_blob=handler_blob,
                conditions_blob=conditions_blob,
                batch_size=step.batch_size,
                batch_timeout=step.batch_timeout,
                nprocs=step.nprocs,
                queue_fds=[q.fd for q in self._queues],
                doorbell_fds=[d.fd for d in self._doorbells],
                clients=self._clients,
                arena_fds=[a.fd for a in self._arenas],
                own_arena=0,
                control_fd=self._control.fd,
                slot=0,
                parent_pid=os.getpid(),
                log_level=log.getEffectiveLevel(),
                spin_us=spin,
                sys_path=list(sys.path),
            )
            for number in range(step.nprocs):
                self._supervisor.spawn(with_slot(spec, slot, self._clients), number)
                slot += 1
            if step.on_start_wait:
                time.sleep(step.on_start_wait)
        log.info("Waiting for all workers to start up (timeout: %s s)", timeout)
        self._supervisor.wait_ready(deadline)

    def _become_client(self) -> Client:
        """First ``process`` call in this process — the one that started the
        flow, or one forked from it after the start (a web server's worker):
        take a client slot of our own — its result queue, doorbell and arena."""
        slot = self._control.claim_client()
        if slot >= self._clients:
            raise FlowError(
                f"more processes submit tasks than Flow(clients={self._clients}) allows"
            )
        self._export_task = None
        self._client = Client(
            slot=slot,
            steps=self._steps,
            step_names=self._step_names,
            queues=self._queues,
            doorbell=self._doorbells[slot],
            control=self._control,
            arenas=self._arenas,
            priorities=self._queue_priorities,
            reject_when_full=self._reject_when_full,
            queue_size=self._queue_size,
            metrics=self._collect_metrics,
            spin_us=PARENT_SPIN_BASE_US + PARENT_SPIN_PER_STEP_US * len(self._steps),
        )
        _set_parent_arena(self._arenas[slot])  # share_value() allocates there now
        return self._client

    def _on_worker_death(self, worker: WorkerProcess, how: str, keys: list[int]) -> None:
        """Monitor thread: a worker died. Each task it held fails at once (an
        error in its client's result queue, whichever process that is); the
        supervisor respawns the worker."""
        if self._state not in (FlowState.RUNNING, FlowState.STEPS_INITIALIZED):
            return
        self._deaths += 1
        pid = worker.process.pid
        name = worker.step_name
        log.error("The process %s of %s died (%s) holding %d task(s)", pid, name, how, len(keys))
        died = WorkerDiedError(f"{name}: worker {pid} died ({how}) while handling the task")
        payload = encode_error(name, died, WorkerDiedError)
        touched = set()
        for key in keys:
            client = min(key >> CLIENT_SHIFT, self._clients - 1)
            try:
                self._queues[len(self._steps) + client].push(key, 0, KIND_ERROR, 0, payload)
                touched.add(client)
            except Exception:
                log.exception("could not report the lost task %s", key)
        for client in touched:
            self._queues[len(self._steps) + client].notify(self._doorbells[client])
        if worker.spec.own_arena < len(self._arenas):
            self._arenas[worker.spec.own_arena].free_keys(keys)

    def _unwedge_queues(self) -> None:
        """Monitor thread, every tick: a worker killed in the instant between
        claiming room in a queue and publishing its message leaves that queue
        stuck at it. After a death, a head seen unpublished on two ticks in a
        row is such a leftover, and becomes a message consumers skip."""
        if not self._deaths:
            return
        seen = {
            (index, ring, head)
            for index, queue in enumerate(self._queues)
            for ring, head in queue.unpublished_heads()
        }
        for index, ring, head in seen & self._unpublished:
            if self._queues[index].skip_abandoned(ring, head):
                log.warning("Skipped a message a dead worker left unfinished in queue %d", index)
        self._unpublished = seen

    def _on_step_down(self, step_name: str) -> None:
        """Monitor thread: every worker of a step keeps dying."""
        self._broken = f"{step_name} is down: its workers keep dying (see the log)"
        client = self._client
        loop = client.loop if client is not None else None
        if client is not None and loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(client.core.fail_all, FlowError(self._broken))

    # -- processing ----------------------------------------------------------

    async def process(self, task: BaseTask, timeout_sec: float = 5.0) -> bool:
        """Runs ``task`` through the steps; on return the handlers' fields are
        set on ``task`` itself. Raises ``TaskTimeoutError`` (a ``FlowError``)
        when ``timeout_sec`` passes, ``HandlerError`` when a handler raised,
        ``NotRunningError`` when the flow is not running."""
        if self._state is not FlowState.RUNNING:
            raise NotRunningError(f"Flow is not running (state: {self._state.value})")
        client = self._client
        if client is None:
            client = self._become_client()
        if self._broken is not None:
            raise FlowError(self._broken)
        if not timeout_sec or timeout_sec <= 0:
            raise ValueError(f"timeout_sec must be > 0, got {timeout_sec!r}")
        loop = asyncio.get_running_loop()
        if loop is not client.loop:
            self._attach_loop(client, loop)
        sent = client.core.submit(task, timeout_sec)
        if isinstance(sent, int):
            slow = client.submit(task, timeout_sec)  # what the Rust client leaves to Python
            if slow is None:
                return True  # no step's condition holds: nothing to do
            future = slow
        else:
            future = sent
        try:
            await future
        except asyncio.CancelledError:
            client.core.cancel(future)  # workers skip it instead of handling it
            if self._state in (FlowState.STOPPING, FlowState.STOPPED):
                raise FlowError("Task was cancelled: the flow is stopping") from None
            raise
        return True

    def _attach_loop(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        if self._export_task is not None:
            try:
                self._export_task.cancel()
            except RuntimeError:  # its loop is closed already
                pass
            self._export_task = None
        client.attach(loop)
        if self._metrics_exporter is not None:
            self._export_task = loop.create_task(self._export_metrics(self._metrics_exporter))

    # -- stop ----------------------------------------------------------------

    async def stop(self, graceful: bool = True) -> None:
        """Stops the flow. ``graceful``: let queued tasks finish (each within
        its own timeout) first; otherwise fail them at once with ``FlowError``.
        Worker processes are gone when this returns."""
        if self._state not in (FlowState.RUNNING, FlowState.STEPS_INITIALIZED):
            log.info("Flow is not running")
            return
        client = self._client
        if os.getpid() != self._owner_pid:
            # a forked client: its own tasks end here; the workers belong to
            # the process that started the flow, which stops them
            if client is not None:
                client.core.fail_all(FlowError("Flow was stopped"))
                self._drop_client()
            self._state = FlowState.STOPPED
            return
        self._state = FlowState.STOPPING
        log.info("Flow is stopping")
        if client is not None:
            pending = [f for f in client.core.futures() if not f.done()]
            if graceful and pending:
                await asyncio.wait(pending)  # each task has its own timeout
            client.core.fail_all(FlowError("Flow was stopped"))
        if self._supervisor is not None:
            self._supervisor.stop_respawning()
        for queue in self._queues:
            queue.close()
        await self._join_workers()
        self._drop_client()
        self._release_queues()
        self._state = FlowState.STOPPED
        log.info("Flow was stopped")

    async def _join_workers(self) -> None:
        """Lets workers exit by themselves (bounded), then terminates the rest."""
        supervisor = self._supervisor
        if supervisor is not None:
            deadline = time.monotonic() + WORKER_EXIT_TIMEOUT
            while (alive := supervisor.sentinels_alive()) and time.monotonic() < deadline:
                await asyncio.to_thread(wait, alive, deadline - time.monotonic())
        self._kill_workers()

    def _kill_workers(self) -> None:
        if self._supervisor is not None:
            self._supervisor.kill_all()
            self._supervisor = None

    # -- metrics -----------------------------------------------------------------

    @property
    def _metrics_control(self) -> Any:
        return self._control if self._collect_metrics else None

    def metrics(self) -> FlowMetrics | None:
        """A snapshot of what the flow recorded since it started (None when
        it is not started or metrics are off): per step handle, batch and
        queue times, batch sizes, tasks handled / expired / cancelled, queue
        sizes; how tasks ended; resident memory per process."""
        control = self._metrics_control
        if control is None or self._supervisor is None:
            return None
        collector = self._metrics_collector
        steps = []
        names = [*self._step_names, MAIN_PROCESS]
        for index, name in enumerate(names):
            raw = control.metrics(index)
            if raw is None:
                continue
            queue_size = len(self._queues[index]) if index < len(self._queues) else 0
            if not collector.is_collectible(MetricsTypes.QUEUE_SIZE):
                queue_size = 0
            steps.append(
                StepMetrics(
                    name=name,
                    handle_us=Histogram.from_raw(raw["handle_us"]),
                    batch_us=Histogram.from_raw(raw["batch_us"]),
                    batch_size=Histogram.from_raw(raw["batch_size"]),
                    transfer_us=Histogram.from_raw(raw["transfer_us"]),
                    handled=raw["handled"],
                    expired=raw["expired"],
                    cancelled=raw["cancelled"],
                    queue_size=queue_size,
                )
            )
        memory: dict[str, int] = {}
        if collector.is_collectible(MetricsTypes.MEMORY_USAGE):
            memory[MAIN_PROCESS] = _rss_bytes(os.getpid())
            for w in self._supervisor.workers:
                label = w.step_name if w.spec.nprocs == 1 else f"{w.step_name}_{w.number}"
                if w.process is not None and w.process.pid:
                    memory[label] = _rss_bytes(w.process.pid)
        tasks = self.task_counts if collector.is_collectible(MetricsTypes.TASKS) else {}
        return FlowMetrics(steps=steps, tasks=tasks, memory=memory)

    async def _export_metrics(self, exporter: Exporter) -> None:
        """Every ``export_period`` seconds, hands the exporter what changed."""
        last = self.metrics()
        if last is not None:
            last = last.zero()  # the first export tells everything so far
        while last is not None:
            await asyncio.sleep(exporter.export_period)
            now = self.metrics()
            if now is None:
                return
            try:
                exporter.export(now - last)
            except Exception:
                log.exception("metrics exporter failed")
            last = now

    def _drop_client(self) -> None:
        """Ends this process's client: its loop reader and timer go, its
        counts are kept."""
        if self._export_task is not None:
            try:
                self._export_task.cancel()
            except RuntimeError:
                pass
            self._export_task = None
        client, self._client = self._client, None
        if client is not None:
            for name, value in client.core.counts().items():
                self._counts[name] += value
            client.detach()
            client.release_all()  # the workers that used them are gone

    def _release_queues(self) -> None:
        self._broken = None
        self._queues = []
        self._arenas = []
        self._doorbells = []


#: Every Flow of this process, to forget their clients in a forked child.
_FLOWS: weakref.WeakSet[Flow] = weakref.WeakSet()


def _forget_clients() -> None:
    """In a process just forked: the parent's clients are not ours (their
    loop, futures and result queues stay the parent's); a flow used here
    takes a client slot of its own on its first ``process`` call."""
    for flow in list(_FLOWS):
        flow._client = None
        flow._export_task = None


os.register_at_fork(after_in_child=_forget_clients)
