"""The Flow: a pipeline of steps, each run by worker processes.

Tasks travel through shared-memory queues of the Rust core
(``aqueduct._core``); the parent learns of results through an eventfd
registered with its asyncio loop, so nothing polls.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import sys
import time
from enum import Enum
from multiprocessing.connection import wait
from typing import Any, Literal

import cloudpickle

from . import _core
from ._protocol import (
    CLIENT_SHIFT,
    FLAG_REFS,
    FLAGS,
    KIND_DROPPED,
    KIND_ERROR,
    WorkerSpec,
    decode_error,
    encode_error,
)
from ._shm import (
    DEFAULT_SHM_SIZE,
    THRESHOLD,
    SharedMemory,
    _set_parent_arena,
    parent_arena,
    split,
)
from ._supervisor import Supervisor, WorkerProcess, with_slot
from .exceptions import (
    FlowError,
    MPStartMethodValueError,
    NotRunningError,
    QueueFullError,
    TaskSerializationError,
    TaskTimeoutError,
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
#: Results taken per drain before re-checking the loop.
DRAIN_LIMIT = 4096
#: How long a worker with an empty queue spins (yielding the core between
#: checks) before it sleeps on its futex; AQUEDUCT_SPIN_US overrides it.
#: Long enough to catch the next task of a sequential caller, short enough not
#: to steal the cores of busy processes.
DEFAULT_SPIN_US = 20
#: How long the parent, with a single task in flight, spins on the result
#: queue before going back to its event loop (a kernel wake-up costs more).
PARENT_SPIN_BASE_US = 40
PARENT_SPIN_PER_STEP_US = 30
#: After this many spins in a row that saw no result, spin only on every
#: SPIN_PROBE_EVERY-th call (the handler is slower than a spin is worth).
SPIN_MISS_LIMIT = 4
SPIN_PROBE_EVERY = 32
#: Most processes that may submit tasks to one flow (see ``clients``).
MAX_CLIENTS = 32
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
    return BaseTaskHandler.get_step_name.__func__(type(handler), number)  # type: ignore[attr-defined]


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
        self._client = 0  # this process's client slot
        self._client_pid = -1  # the process that holds it
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
        self._counts = dict.fromkeys(("done", "failed", "timeout", "cancelled"), 0)
        self._queues: list[Any] = []  # step input queues, then the result queue
        self._doorbells: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._futures: dict[int, asyncio.Future[bytes]] = {}
        self._backlogs: dict[int, collections.deque[tuple[Any, ...]]] = {}
        self._keys = itertools.count(1)
        self._key_base = 0  # this client's slot, in the top bits of its keys
        self._timeouts = _TimeoutWheel(self._futures)
        self._by_value: dict[type, bool] = {}
        self._first_condition = (
            self._steps[0].handle_condition if self._steps else (lambda task: False)
        )
        self._arenas: list[Any] = []
        self._shm = SharedMemory([], own=None)
        self._held: dict[int, list[int]] = {}
        self._spin_budget_us = PARENT_SPIN_BASE_US + PARENT_SPIN_PER_STEP_US * len(self._steps)
        self._spin_calls = 0
        self._spin_misses = 0

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
        return dict(self._counts)

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
        self._shm = SharedMemory(self._arenas, own=0)
        self._owner_pid = os.getpid()
        self._client_pid = -1  # a client slot is taken on the first process() call
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
                metrics=self._collect_metrics,
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

    def _become_client(self) -> None:
        """First ``process`` call in this process — the one that started the
        flow, or one forked from it after the start (a web server's worker):
        take a client slot of our own — its result queue, doorbell and arena —
        and start afresh, leaving any parent's loop and workers alone."""
        slot = self._control.claim_client()
        if slot >= self._clients:
            raise FlowError(
                f"more processes submit tasks than Flow(clients={self._clients}) allows"
            )
        if self._client_pid != -1 and self._loop is not None:
            self._loop = None  # inherited from the parent: not ours to touch
        self._client = slot
        self._client_pid = os.getpid()
        self._key_base = slot << CLIENT_SHIFT
        self._export_task = None
        self._futures.clear()
        self._backlogs.clear()
        self._held.clear()
        self._timeouts = _TimeoutWheel(self._futures)
        self._shm = SharedMemory(self._arenas, own=slot)
        _set_parent_arena(self._arenas[slot])  # share_value() allocates there now

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
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._fail_all, self._broken)

    def _fail_all(self, message: str) -> None:
        for future in self._futures.values():
            if not future.done():
                future.set_exception(FlowError(message))

    # -- processing ----------------------------------------------------------

    async def process(self, task: BaseTask, timeout_sec: float = 5.0) -> bool:
        """Runs ``task`` through the steps; on return the handlers' fields are
        set on ``task`` itself. Raises ``TaskTimeoutError`` (a ``FlowError``)
        when ``timeout_sec`` passes, ``HandlerError`` when a handler raised,
        ``NotRunningError`` when the flow is not running."""
        if self._state != FlowState.RUNNING:
            raise NotRunningError(f"Flow is not running (state: {self._state.value})")
        if os.getpid() != self._client_pid:
            self._become_client()
        if self._broken is not None:
            raise FlowError(self._broken)
        if not timeout_sec or timeout_sec <= 0:
            raise ValueError(f"timeout_sec must be > 0, got {timeout_sec!r}")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._attach_loop(loop)

        priority = task.priority
        if priority != 0 or self._queue_priorities > 1:
            priority = task.priority = max(0, min(int(priority), self._queue_priorities - 1))
        task.set_timeout(timeout_sec)
        first = 0 if self._first_condition(task) else self._first_step(task)
        if first == len(self._steps):
            return True  # no step's condition holds: nothing to do
        key = self._key_base | next(self._keys)
        self._control.uncancel(key)  # the cancel set wraps around
        cls = type(task)
        by_value = self._by_value.get(cls)
        if by_value is None:
            by_value = self._needs_by_value(cls)
        kind, payload, refs = self._shm.dumps(task, key, by_value)
        if refs:
            self._hold(key, refs)
        deadline_ns = int(task.expiration_time * 1e9)  # type: ignore[operator]
        future: asyncio.Future[Any] = loop.create_future()
        self._futures[key] = future
        self._timeouts.add(loop, key, timeout_sec)
        try:
            try:
                self._submit(first, (future, key, deadline_ns, kind, priority, payload))
            except BaseException:
                self._release(key)
                raise
            if len(self._futures) == 1:
                self._spin_for_result()
            finished = await future
        except asyncio.CancelledError:
            self._control.cancel(key)  # workers skip it instead of handling it
            self._counts["cancelled"] += 1
            if self._state in (FlowState.STOPPING, FlowState.STOPPED):
                raise FlowError("Task was cancelled: the flow is stopping") from None
            raise
        except TaskTimeoutError:
            self._counts["timeout"] += 1  # workers skip it: its deadline passed
            raise
        except BaseException:
            self._counts["failed"] += 1
            raise
        finally:
            del self._futures[key]
        self._counts["done"] += 1
        if cls in _PLAIN_TASK_CLASSES:
            fields = finished.__dict__
            for name in _BOOKKEEPING_FIELDS:
                fields.pop(name, None)
            task.__dict__.update(fields)
        else:
            task.update(finished)
        return True

    def _spin_for_result(self) -> None:
        """With a single task in flight, wait for its result by spinning on
        shared memory for a few tens of microseconds (GIL released) instead of
        paying for a kernel wake-up through the event loop. Calls that keep
        missing (slow handlers) stop spinning, probing again now and then."""
        self._spin_calls += 1
        if self._spin_misses >= SPIN_MISS_LIMIT and self._spin_calls % SPIN_PROBE_EVERY:
            return
        if self._results.spin_ready(self._spin_budget_us):
            self._spin_misses = 0
            self._on_doorbell()
        else:
            self._spin_misses += 1

    def _needs_by_value(self, cls: type) -> bool:
        """True for task classes pickle cannot name (a class made inside a
        function): their tasks travel pickled by value. Classes of
        ``__main__`` travel by name: workers fetch them once. Also notes
        classes whose finished tasks may be copied field by field directly."""
        by_value = not _named(cls)
        self._by_value[cls] = by_value
        plain_update = getattr(cls, "update", None) is BaseTask.update
        if plain_update and cls.__setattr__ is object.__setattr__:
            _PLAIN_TASK_CLASSES.add(cls)
        return by_value

    def _first_step(self, task: BaseTask) -> int:
        """Index of the first step whose condition holds for ``task``."""
        for index, step in enumerate(self._steps):
            if step.handle_condition(task):
                return index
        return len(self._steps)

    def _submit(self, index: int, entry: tuple[Any, ...]) -> None:
        """Pushes a task into step ``index``'s queue, or queues it in arrival
        order until a worker frees room (the doorbell rings then)."""
        backlog = self._backlogs.get(index)
        if backlog:
            backlog.append(entry)
            return
        queue = self._queues[index]
        if _try_push(queue, entry):
            queue.notify()
        elif self._reject_when_full:
            raise QueueFullError(
                f"the queue of {self._step_names[index]} is full "
                f"({self._queue_size or 'its ring'} tasks)"
            )
        else:
            self._backlogs.setdefault(index, collections.deque()).append(entry)

    def _flush_backlogs(self) -> None:
        for index, backlog in self._backlogs.items():
            queue = self._queues[index]
            pushed = False
            while backlog:
                future, key = backlog[0][0], backlog[0][1]
                if future.done():
                    self._release(key)  # timed out while waiting: never sent
                else:
                    try:
                        if not _try_push(queue, backlog[0]):
                            break
                        pushed = True
                    except Exception as exc:
                        self._release(key)
                        future.set_exception(exc)
                backlog.popleft()
            if pushed:
                queue.notify()

    def _attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._export_task is not None:
            try:
                self._export_task.cancel()
            except RuntimeError:  # its loop is closed already
                pass
            self._export_task = None
        old = self._loop
        if old is not None and not old.is_closed():
            try:
                old.remove_reader(self._doorbell.fd)
            except Exception:  # the old loop may be gone with its thread
                pass
        self._loop = loop
        loop.add_reader(self._doorbell.fd, self._on_doorbell)
        self._on_doorbell()
        if self._metrics_exporter is not None:
            self._export_task = loop.create_task(self._export_metrics(self._metrics_exporter))

    @property
    def _results(self) -> Any:
        return self._queues[len(self._steps) + self._client]

    @property
    def _doorbell(self) -> Any:
        return self._doorbells[self._client]

    def _on_doorbell(self) -> None:
        """Takes every ready result; re-arms the doorbell before going idle."""
        self._doorbell.drain()
        results = self._results
        futures = self._futures
        while True:
            batch = results.drain(DRAIN_LIMIT, self._metrics_control, len(self._steps))
            for key, kind, _priority, _deadline, payload in batch:
                future = futures.get(key)
                base = kind & ~FLAGS
                if future is not None and not future.done():
                    if base == KIND_ERROR:
                        future.set_exception(decode_error(payload))
                    elif base != KIND_DROPPED:
                        self._deliver(future, kind, payload)
                elif kind & FLAG_REFS:
                    self._free_unwanted(payload)
                if self._held:
                    self._release(key)  # after _deliver made its views
            if batch:
                results.released()
            if len(batch) < DRAIN_LIMIT and not results.arm_doorbell():
                break
        if self._backlogs:
            self._flush_backlogs()

    def _deliver(self, future: asyncio.Future[Any], kind: int, payload: bytes) -> None:
        try:
            finished, _refs = self._shm.loads(kind, payload)
        except Exception as exc:
            future.set_exception(
                TaskSerializationError(f"cannot unpickle the finished task: {exc}")
            )
        else:
            future.set_result(finished)

    # -- shared memory bookkeeping ----------------------------------------------

    def _hold(self, key: int, refs: list[Any]) -> None:
        """Blocks of the parent's arena stay allocated while task ``key`` is in
        flight (until its result, error or drop notice comes back)."""
        own = self._client
        arena = self._arenas[own]
        held = [block for index, block, _offset, _size in refs if index == own]
        for block in held:
            arena.retain(block)
        if held:
            self._held[key] = held

    def _release(self, key: int) -> None:
        held = self._held.pop(key, None)
        if held:
            arena = self._arenas[self._client]
            for block in held:
                arena.release(block)

    def _free_unwanted(self, payload: bytes) -> None:
        """Frees the workers' blocks of a result nobody waits for any more."""
        refs, _body = split(payload)
        for index, block, _offset, _size in refs:
            if index >= self._clients:
                self._arenas[index].free(block)

    # -- stop ----------------------------------------------------------------

    async def stop(self, graceful: bool = True) -> None:
        """Stops the flow. ``graceful``: let queued tasks finish (each within
        its own timeout) first; otherwise fail them at once with ``FlowError``.
        Worker processes are gone when this returns."""
        if self._state not in (FlowState.RUNNING, FlowState.STEPS_INITIALIZED):
            log.info("Flow is not running")
            return
        if os.getpid() != self._owner_pid:
            # a forked client: its own tasks end here; the workers belong to
            # the process that started the flow, which stops them
            for future in self._futures.values():
                if not future.done():
                    future.set_exception(FlowError("Flow was stopped"))
            if os.getpid() == self._client_pid:
                self._detach_loop()
            self._state = FlowState.STOPPED
            return
        self._state = FlowState.STOPPING
        log.info("Flow is stopping")
        pending = [f for f in self._futures.values() if not f.done()]
        if graceful and pending:
            await asyncio.wait(pending)  # each future has its own timeout timer
        for future in self._futures.values():
            if not future.done():
                future.set_exception(FlowError("Flow was stopped"))
        if self._supervisor is not None:
            self._supervisor.stop_respawning()
        for queue in self._queues:
            queue.close()
        await self._join_workers()
        self._detach_loop()
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

    def _detach_loop(self) -> None:
        if self._export_task is not None:
            try:
                self._export_task.cancel()
            except RuntimeError:
                pass
            self._export_task = None
        if self._loop is not None and not self._loop.is_closed() and self._doorbells:
            try:
                self._loop.remove_reader(self._doorbell.fd)
            except Exception:
                pass
        self._loop = None

    def _release_queues(self) -> None:
        self._broken = None
        for key in list(self._held):
            self._release(key)  # the workers that used them are gone
        self._queues = []
        self._arenas = []
        self._shm = SharedMemory([], own=None)
        self._doorbells = []
        self._backlogs.clear()
        self._futures.clear()
        self._timeouts.clear()


#: Task classes with BaseTask's update() and plain attribute setting: their
#: finished fields are copied onto the caller's task with one dict update.
_PLAIN_TASK_CLASSES: set[type] = set()
_BOOKKEEPING_FIELDS = ("task_id", "priority", "expiration_time")


def _named(cls: type) -> bool:
    """True when ``cls`` can be found by its module and qualified name."""
    found: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is cls


def _try_push(queue: Any, entry: tuple[Any, ...]) -> bool:
    """Pushes a ``(future, key, deadline_ns, kind, priority, payload)`` entry;
    False when the queue is full, after asking its consumers to ring the
    doorbell once they free room (and retrying once, in case they just did)."""
    _future, key, deadline_ns, kind, priority, payload = entry
    client = key >> CLIENT_SHIFT
    for attempt in range(2):
        try:
            queue.push(key, deadline_ns, kind, priority, payload)
            return True
        except QueueFullError:
            if attempt == 0:
                queue.want_space(client)
    return False


class _TimeoutWheel:
    """Fails futures whose timeout passed, with one loop timer per distinct
    timeout value instead of one per task. Tasks with the same ``timeout_sec``
    expire in submission order, so each value keeps a FIFO of
    ``(deadline, key)``; finished tasks (keys gone from ``futures``) are
    dropped from its head as new ones arrive, keeping it about as long as the
    number of tasks in flight."""

    def __init__(self, futures: dict[int, asyncio.Future[bytes]]) -> None:
        self._futures = futures
        self._fifos: dict[float, collections.deque[tuple[float, int]]] = {}
        self._timers: dict[float, asyncio.TimerHandle] = {}

    def add(self, loop: asyncio.AbstractEventLoop, key: int, timeout: float) -> None:
        fifo = self._fifos.get(timeout)
        if fifo is None:
            fifo = self._fifos[timeout] = collections.deque()
        futures = self._futures
        while fifo and fifo[0][1] not in futures:
            fifo.popleft()
        deadline = loop.time() + timeout
        fifo.append((deadline, key))
        if timeout not in self._timers:
            self._timers[timeout] = loop.call_at(deadline, self._fire, loop, timeout)

    def _fire(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        fifo = self._fifos[timeout]
        now = loop.time()
        while fifo and (fifo[0][1] not in self._futures or fifo[0][0] <= now):
            _deadline, key = fifo.popleft()
            future = self._futures.get(key)
            if future is not None and not future.done():
                future.set_exception(
                    TaskTimeoutError(f"Task timeout error: not done in {timeout} s")
                )
        if fifo:
            self._timers[timeout] = loop.call_at(fifo[0][0], self._fire, loop, timeout)
        else:
            del self._timers[timeout]
            del self._fifos[timeout]

    def clear(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._fifos.clear()
