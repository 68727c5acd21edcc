"""The Flow: a pipeline of steps, each run by worker processes.

Tasks travel through shared-memory queues of the Rust core
(``aqueduct._core``); the parent learns of results through an eventfd
registered with its asyncio loop, so nothing polls. ``Flow`` is the user's
face of a flow: what it was built with is a ``FlowConfig``, and what changes
as it runs belongs to its ``FlowRuntime`` (``aqueduct._runtime``).
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Literal

from . import _core
from ._ipc.shm import DEFAULT_SHM_SIZE
from ._runtime.state import FlowState
from .handler import BaseTaskHandler
from .logger import log
from .metrics import Collector, Exporter, FlowMetrics
from .step import FlowStep, check_handler
from .task import BaseTask

# what process() enters for a flow without tracing
_UNTRACED = nullcontext()

if TYPE_CHECKING:
    from ._runtime.runtime import FlowRuntime
    from ._runtime.stream import TaskStream

__all__ = ["Flow", "FlowState", "FlowStep", "runtime_of"]

#: How long a worker with an empty queue may spin before it sleeps (see
#: ``_runtime.config.spin_us``); AQUEDUCT_SPIN_US overrides it, 0 turns it off.
DEFAULT_SPIN_US = _core.DEFAULT_SPIN_US


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
    ``clients`` is how many processes may call ``process`` (processes forked
    from this one after ``start``, such as a pre-fork web server's workers).
    ``tracing=True`` makes OpenTelemetry spans of every task (see
    :mod:`aqueduct.tracing`; needs ``pip install 'aqueduct[otel]'``).
    ``latency_objective`` (seconds): every step's that sets none of its own
    (see ``FlowStep``), counted from when a task enters the flow.
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
        tracing: bool = False,
        latency_objective: float | None = None,
    ) -> None:
        # the runtime is imported by the first Flow made, not with this
        # module: a worker importing the user's module (which imports Flow)
        # starts without it
        from ._runtime import submission
        from ._runtime.config import FlowConfig
        from ._runtime.runtime import FlowRuntime
        from ._runtime.stream import TaskStream

        self._submit, self._cancelled = submission.submit, submission.cancelled
        self._stream = TaskStream
        config = FlowConfig.build(
            steps,
            metrics_enabled=metrics_enabled,
            metrics_collector=metrics_collector,
            metrics_exporter=metrics_exporter,
            queue_size=queue_size,
            queue_priorities=queue_priorities,
            mp_start_method=mp_start_method,
            shm_size=shm_size,
            queue_full=queue_full,
            clients=clients,
            tracing=tracing,
            latency_objective=latency_objective,
        )
        self._runtime = FlowRuntime(config)
        self._traced = tracing

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> FlowState:
        return self._runtime.state

    @property
    def is_running(self) -> bool:
        return self._runtime.state == FlowState.RUNNING

    @property
    def failure(self) -> str | None:
        """Why the flow cannot serve although it runs (a step whose workers
        keep dying; in a process forked from the one that started it, that
        one's death), or None. Integrations stop the app on it."""
        return self._runtime.failure

    @property
    def task_counts(self) -> dict[str, int]:
        """How the tasks given to ``process`` ended: ``done``, ``failed``
        (handler error, dead worker, ...), ``timeout`` and ``cancelled`` (the
        caller was cancelled); workers skip timed-out and cancelled tasks."""
        return self._runtime.task_counts

    @property
    def shm_used(self) -> int:
        """Bytes of shared memory held by buffers now: in the workers' arenas
        of this flow and in its clients' arenas (every flow has its own)."""
        return self._runtime.shm_used

    @property
    def are_steps_initialized(self) -> bool:
        return self._runtime.state == FlowState.STEPS_INITIALIZED

    # -- start ---------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Starts every worker and waits until each handler's ``on_start`` has
        finished, at most ``timeout`` seconds (``FlowStartTimeoutError``)."""
        if self._runtime.state == FlowState.RUNNING:
            log.info("Flow is already running")
            return
        if self._runtime.state != FlowState.STEPS_INITIALIZED:
            self._runtime.init_processes(timeout)
        self._runtime.start_inited()

    def init_processes(self, timeout: float | None = None) -> None:
        """Starts the worker processes and waits for their ``on_start``."""
        self._runtime.init_processes(timeout)

    def start_inited(self) -> None:
        """Makes a flow whose processes are initialised accept tasks."""
        self._runtime.start_inited()

    # -- processing ----------------------------------------------------------

    async def process(self, task: BaseTask, timeout_sec: float = 5.0) -> bool:
        """Runs ``task`` through the steps; on return the handlers' fields are
        set on ``task`` itself. Raises ``TaskTimeoutError`` (a ``FlowError``)
        when ``timeout_sec`` passes, ``HandlerError`` when a handler raised,
        ``NotRunningError`` when the flow is not running."""
        runtime = self._runtime
        with self._trace(task) if self._traced else _UNTRACED:
            client, future = await self._submit(runtime, task, timeout_sec)
            if future is None:
                return True  # no step's condition holds: nothing to do
            try:
                await future
            except asyncio.CancelledError:
                self._cancelled(runtime, client, future)  # workers skip it instead of handling it
                raise
            return True

    def _trace(self, task: BaseTask) -> AbstractContextManager[None]:
        from . import tracing

        return tracing.processing(task, self._runtime.config.step_names)

    def stream(self, task: BaseTask, timeout_sec: float = 5.0) -> TaskStream:
        """Runs ``task`` through the steps and yields the parts its handlers
        ``emit``, as they come: ``async for part in flow.stream(task)``. When
        the loop ends, ``task`` has its final fields, as after ``process``;
        a task's error is raised after the parts sent before it (the same
        exceptions as ``process``). Leaving the loop early cancels the task:
        its handler's ``emit`` returns False from then on."""
        return self._stream(self._runtime, task, timeout_sec)

    # -- stop ----------------------------------------------------------------

    async def replace_handler(
        self,
        step: FlowStep | str | int,
        handler: BaseTaskHandler,
        start_timeout: float | None = None,
    ) -> None:
        """Swaps a step's handler while the flow serves: new workers start
        beside the old ones and run ``handler.on_start`` (within
        ``start_timeout`` seconds, default 120) without taking tasks; then, at once, they take
        the step's queue over and the old workers finish the tasks they hold
        and exit. No task is lost or failed. If a new worker's ``on_start``
        raises (``WorkerStartError``) or takes too long
        (``FlowStartTimeoutError``), the new workers go and the old handler
        serves on. ``step`` is one of the flow's ``FlowStep`` objects, its name, or
        its index."""
        config = self._runtime.config
        if isinstance(step, FlowStep):
            found = [i for i, s in enumerate(config.steps) if s is step]
        elif isinstance(step, str):
            found = [i for i, name in enumerate(config.step_names) if name == step]
        else:
            found = [int(step)] if 0 <= int(step) < len(config.steps) else []
        if not found:
            raise ValueError(f"the flow has no step {step!r} (steps: {list(config.step_names)})")
        check_handler(handler)
        await self._runtime.replace_handler(found[0], handler, start_timeout)

    async def stop(self, graceful: bool = True) -> None:
        """Stops the flow. ``graceful``: let queued tasks finish (each within
        its own timeout) first; otherwise fail them at once with ``FlowError``.
        Worker processes are gone when this returns."""
        await self._runtime.stop(graceful)

    # -- metrics -----------------------------------------------------------------

    def metrics(self) -> FlowMetrics | None:
        """A snapshot of what the flow recorded since it started (None when
        it is not started or metrics are off): per step handle, batch and
        queue times, batch sizes, tasks handled / expired / cancelled, queue
        sizes; how tasks ended; resident memory per process."""
        return self._runtime.metrics()


def runtime_of(flow: Flow) -> FlowRuntime:
    """The machinery behind ``flow``, for aqueduct's own modules that drive
    it (the HTTP server, ``aqueduct.testing``) — not a user's API."""
    return flow._runtime
