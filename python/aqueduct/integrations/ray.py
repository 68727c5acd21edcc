"""Ray Serve integration: one Flow per replica, as many replicas as Ray places.

A Flow lives on one machine (its workers share memory with it). To serve past
one machine, deploy it on Ray Serve: every replica builds and owns its own
Flow — worker processes and shared memory stay on the replica's node — and
Ray routes requests, scales replicas and replaces unhealthy ones::

    from ray import serve
    from aqueduct.integrations.ray import FlowHandle, flow_deployment

    app = flow_deployment(
        build_flow,                       # called in each replica
        task_from_request=to_task,        # optional: HTTP ingress
        num_replicas=2,                   # any serve.deployment option
        ray_actor_options={"num_cpus": 2},
    ).bind()
    handle = FlowHandle(serve.run(app, route_prefix="/sum"))
    task = SumTask([1, 2])
    await handle.process(task)            # as Flow.process: fields set on task

Batching happens inside each replica's Flow; Ray Serve's own ``@serve.batch``
is not used. The replica's health check fails once its Flow cannot serve
(stopped, or a step whose workers keep dying), so Ray replaces the replica;
replica shutdown stops the Flow gracefully.

Handlers and tasks must be importable by name on every node (a module in the
job's ``working_dir`` or ``py_modules``): worker processes are spawned
interpreters that import them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import _core
from ..exceptions import (
    AqueductError,
    FlowError,
    QueueFullError,
    TaskSerializationError,
    TaskTimeoutError,
)
from ..flow import Flow
from ..logger import log
from ..task import BaseTask
from .utils import dead_flow, error_status, get_start_timeout

__all__ = [
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_ONGOING_REQUESTS",
    "DEFAULT_SPLIT_AT",
    "FlowHandle",
    "FlowReplica",
    "flow_deployment",
    "task_fields",
]

#: Ray Serve's own default (5 requests in flight per replica) would starve a
#: Flow's batching; a replica takes this many unless ``max_ongoing_requests``
#: is given.
DEFAULT_MAX_ONGOING_REQUESTS = 256

#: FlowHandle: Ray requests out at once, and tasks per request.
DEFAULT_MAX_IN_FLIGHT = 16
DEFAULT_MAX_BATCH = 256
DEFAULT_SPLIT_AT = 16

#: Fields of a task that are the flow's bookkeeping, not results (its id is
#: kept in the answer).
_INTERNAL_FIELDS = frozenset(_core.BOOKKEEPING_FIELDS) - {"task_id"}

TaskFromRequest = Callable[[Request], "BaseTask | Awaitable[BaseTask]"]
#: takes the task (any BaseTask subclass) after the flow handled it
ResponseFromTask = Callable[[Any], Any]


def task_fields(task: BaseTask) -> dict[str, Any]:
    """The task's fields (its id, its inputs and what the handlers set),
    without the flow's bookkeeping: the default HTTP response body."""
    return {
        name: value
        for name, value in vars(task).items()
        if name not in _INTERNAL_FIELDS and not name.startswith("_")
    }


def _json_default(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _error_response(status: int, error: str, type_name: str) -> JSONResponse:
    """Every HTTP error of the ingress: a JSON ``{"error", "type"}`` body."""
    return JSONResponse({"error": error, "type": type_name}, status_code=status)


def _exception_response(status: int, exc: BaseException) -> JSONResponse:
    return _error_response(status, str(exc), type(exc).__name__)


def _picklable(result: object) -> BaseException:
    """The exception a task ended with, as one its caller can unpickle."""
    if isinstance(result, AqueductError):
        return result
    if isinstance(result, BaseException):
        return FlowError(f"{type(result).__name__}: {result}")
    return FlowError(f"unexpected result {result!r}")


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class FlowReplica:
    """What each replica of a :func:`flow_deployment` runs: it builds a Flow,
    starts it, serves ``process`` calls (deployment handle) and HTTP requests
    (``__call__``), reports the Flow's health and stops it on shutdown.

    Subclass it under your own ``@serve.deployment`` to add methods, calling
    ``super().__init__(build_flow, ...)`` with the arguments of
    :func:`flow_deployment`; ``start_timeout`` defaults to
    ``FLOW_START_TIMEOUT`` from the environment (300 s)."""

    def __init__(
        self,
        build_flow: Callable[[], Flow],
        task_from_request: TaskFromRequest | None = None,
        response_from_task: ResponseFromTask | None = None,
        timeout_sec: float = 5.0,
        start_timeout: float | None = None,
    ) -> None:
        flow = build_flow()
        if not isinstance(flow, Flow):
            raise TypeError(f"build_flow must return a Flow, got {type(flow).__name__}")
        if not flow.is_running:
            flow.start(timeout=start_timeout if start_timeout is not None else get_start_timeout())
        self._flow = flow
        self._task_from_request = task_from_request
        self._response_from_task = response_from_task or task_fields
        self._timeout_sec = timeout_sec
        log.info("Flow replica started (pid %d)", os.getpid())

    @property
    def flow(self) -> Flow:
        return self._flow

    async def process(self, task: BaseTask, timeout_sec: float | None = None) -> BaseTask:
        """Runs ``task`` through this replica's Flow and returns it with the
        handlers' fields set (the caller holds a copy, not this object)."""
        await self._flow.process(task, timeout_sec or self._timeout_sec)
        return task

    async def process_batch(
        self, tasks: list[BaseTask], timeouts: list[float]
    ) -> list[BaseTask | BaseException]:
        """Runs tasks that travelled together (see :class:`FlowHandle`) in
        this replica's Flow; returns each task, or the exception it got."""
        results = await asyncio.gather(
            *(self._flow.process(t, s) for t, s in zip(tasks, timeouts, strict=True)),
            return_exceptions=True,
        )
        return [
            task if result is True else _picklable(result)
            for task, result in zip(tasks, results, strict=True)
        ]

    async def __call__(self, request: Request) -> Response:
        """HTTP ingress: ``task_from_request`` makes the task, the Flow
        handles it, ``response_from_task`` (default: the task's fields as
        JSON) makes the answer. 400 for a request that makes no task, 503 for
        a full queue, 504 for a timeout, 500 for other flow errors."""
        if self._task_from_request is None:
            return _error_response(
                404,
                "this deployment has no HTTP ingress: give flow_deployment a task_from_request",
                "NotFound",
            )
        try:
            task = await _maybe_await(self._task_from_request(request))
        except Exception as exc:  # the request's fault, not the flow's
            reason = f"cannot make a task of this request: {type(exc).__name__}: {exc}"
            return _error_response(400, reason, type(exc).__name__)
        if not isinstance(task, BaseTask):
            return _error_response(
                500,
                f"task_from_request returned {type(task).__name__}, not a BaseTask",
                "TypeError",
            )
        try:
            await self._flow.process(task, self._timeout_sec)
        except AqueductError as exc:
            return _exception_response(error_status(exc) or 500, exc)
        result = await _maybe_await(self._response_from_task(task))
        if isinstance(result, Response):
            return result
        try:
            body = json.dumps(result, default=_json_default).encode()
        except (TypeError, ValueError) as exc:
            return _error_response(
                500,
                f"the result is not JSON serializable ({exc}); give a response_from_task",
                type(exc).__name__,
            )
        return Response(body, media_type="application/json")

    def info(self) -> dict[str, Any]:
        """Where this replica runs and how its Flow is doing."""
        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "state": self._flow.state.value,
            "failure": self._flow.failure,
            "task_counts": self._flow.task_counts,
        }

    def check_health(self) -> None:
        """Ray Serve's health check: raises once the Flow cannot serve, so Ray
        replaces this replica."""
        reason = dead_flow({"flow": self._flow})
        if reason is not None:
            raise FlowError(reason)

    def __del__(self) -> Awaitable[None] | None:
        # Ray Serve calls __del__ on replica shutdown and awaits what it
        # returns: the graceful stop. Called again by the garbage collector,
        # it finds the flow stopped and does nothing.
        flow: Flow | None = getattr(self, "_flow", None)
        if flow is None or not flow.is_running:
            return None
        return self._stop(flow)

    @staticmethod
    async def _stop(flow: Flow) -> None:
        log.info("Flow replica stopping (pid %d)", os.getpid())
        await flow.stop(graceful=True)


def flow_deployment(
    build_flow: Callable[[], Flow],
    *,
    task_from_request: TaskFromRequest | None = None,
    response_from_task: ResponseFromTask | None = None,
    timeout_sec: float = 5.0,
    start_timeout: float | None = None,
    name: str = "aqueduct",
    **options: Any,
) -> serve.Deployment:
    """A Ray Serve deployment whose replicas each run the Flow ``build_flow()``
    returns; ``.bind()`` it to get an application for ``serve.run``.

    ``build_flow`` runs in every replica (so it is shipped to the nodes, not
    the Flow). ``task_from_request(request)`` (sync or async) turns a
    Starlette request into a task for the HTTP ingress; without it only
    deployment handles reach the flow. ``response_from_task(task)`` makes the
    HTTP answer (a Starlette ``Response``, or something JSON-serializable;
    default :func:`task_fields`). ``timeout_sec`` bounds each HTTP task and
    handle calls that give none. ``start_timeout`` bounds the flow's start
    (default ``FLOW_START_TIMEOUT`` from the environment, 300 s).

    Every other keyword goes to ``serve.deployment``: ``num_replicas``,
    ``autoscaling_config``, ``ray_actor_options``, ``max_ongoing_requests``
    (default :data:`DEFAULT_MAX_ONGOING_REQUESTS`), ``health_check_period_s``,
    ``graceful_shutdown_timeout_s``, ...
    """
    if timeout_sec <= 0:
        raise ValueError(f"timeout_sec must be > 0, got {timeout_sec!r}")
    options.setdefault("max_ongoing_requests", DEFAULT_MAX_ONGOING_REQUESTS)

    class Replica(FlowReplica):
        # the arguments travel with the class, so ``.bind()`` takes none
        def __init__(self) -> None:
            super().__init__(
                build_flow, task_from_request, response_from_task, timeout_sec, start_timeout
            )

    return serve.deployment(name=name, **options)(Replica)


class FlowHandle:
    """Calls a flow deployment the way code calls a Flow:
    ``await FlowHandle(handle).process(task, timeout_sec)`` sets the handlers'
    fields on ``task`` and raises the flow's own exceptions.

    A Ray request costs milliseconds of CPU, far more than a task through a
    Flow. So at most ``max_in_flight`` requests are out at once: tasks
    submitted in the same event-loop iteration, or while every request is
    out, are spread over the next free ones (at most ``max_batch`` tasks
    each). Ray routes the requests to the replicas and each replica's Flow
    makes the model's batches. A lone task is sent at once.

    A replica that dies with the task raises ``FlowError``; Ray Serve's
    back-pressure (``max_queued_requests``) raises ``QueueFullError``; no
    answer within ``timeout_sec`` + ``wait_margin`` seconds (routing, a
    replica starting) raises ``TaskTimeoutError``. Use it from one event loop.
    """

    def __init__(
        self,
        handle: Any,
        wait_margin: float = 30.0,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_batch: int = DEFAULT_MAX_BATCH,
        split_at: int = DEFAULT_SPLIT_AT,
    ) -> None:
        if min(max_in_flight, max_batch, split_at) < 1:
            raise ValueError("max_in_flight, max_batch and split_at must be at least 1")
        self._handle = handle
        self._wait_margin = wait_margin
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._split_at = split_at
        self._pending: list[tuple[BaseTask, float, asyncio.Future[Any]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def handle(self) -> Any:
        """The deployment handle behind it (``serve.handle.DeploymentHandle``)."""
        return self._handle

    async def process(self, task: BaseTask, timeout_sec: float = 5.0) -> bool:
        if not timeout_sec or timeout_sec <= 0:
            raise ValueError(f"timeout_sec must be > 0, got {timeout_sec!r}")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # requests of a former loop died with it
            self._loop = loop
            self._pending.clear()
            self._in_flight.clear()
            self._pump_scheduled = False
        answer: asyncio.Future[Any] = loop.create_future()
        self._pending.append((task, timeout_sec, answer))
        if not self._pump_scheduled:
            self._pump_scheduled = True
            loop.call_soon(self._pump)  # tasks of this loop iteration go together
        bound = timeout_sec + self._wait_margin
        try:
            done = await asyncio.wait_for(answer, bound)
        except TimeoutError:
            raise TaskTimeoutError(f"no answer from the deployment within {bound} s") from None
        if isinstance(done, BaseException):
            raise done
        task.update(done)
        return True

    def _pump(self) -> None:
        self._pump_scheduled = False
        while self._pending and len(self._in_flight) < self._max_in_flight:
            # spread what waits over the free requests, so replicas share it
            # (not thinner than ``split_at`` tasks: each request costs CPU)
            free = self._max_in_flight - len(self._in_flight)
            waiting = len(self._pending)
            size = max(-(-waiting // free), min(waiting, self._split_at))
            size = min(self._max_batch, size)
            batch = self._pending[:size]
            del self._pending[:size]
            batch = [entry for entry in batch if not entry[2].done()]  # callers gone
            if batch:
                request = asyncio.ensure_future(self._send(batch))
                self._in_flight.add(request)
                request.add_done_callback(self._sent)

    def _sent(self, request: asyncio.Task[None]) -> None:
        self._in_flight.discard(request)
        self._pump()

    async def _send(self, batch: list[tuple[BaseTask, float, asyncio.Future[Any]]]) -> None:
        tasks = [task for task, _, _ in batch]
        timeouts = [timeout for _, timeout, _ in batch]
        response = None
        try:
            response = self._handle.process_batch.remote(tasks, timeouts)
            results = await asyncio.wait_for(_answer(response), max(timeouts) + self._wait_margin)
        except BaseException as exc:
            if response is not None and isinstance(exc, TimeoutError | asyncio.CancelledError):
                response.cancel()
            if len(batch) > 1 and _unpicklable(exc):
                # one task spoils the request: send each alone, so only it fails
                for entry in batch:
                    await self._send([entry])
                return
            error = _flow_error(exc)
            results = [error] * len(batch)
        for (_, _, answer), result in zip(batch, results, strict=True):
            if not answer.done():
                answer.set_result(result)


def _unpicklable(exc: BaseException) -> bool:
    """Whether Ray could not serialize a request's arguments in this process
    (it raises a plain TypeError): the replica ran none of its tasks. Errors
    from the replica's side are RayErrors, and are never sent again."""
    return isinstance(exc, pickle.PicklingError | TypeError) and not isinstance(exc, RayError)


def _flow_error(exc: BaseException) -> BaseException:
    """What a caller gets for a Ray request that failed as a whole."""
    if _unpicklable(exc):
        first_line = str(exc).partition("\n")[0]  # Ray adds a long report
        return TaskSerializationError(f"cannot send the task to the deployment: {first_line}")
    if isinstance(exc, TimeoutError):
        return TaskTimeoutError("no answer from the deployment in time")
    if isinstance(exc, RayTaskError):
        if isinstance(exc.cause, AqueductError):
            return exc.cause
        return FlowError(f"the replica failed the request: {exc.cause!r}")
    if isinstance(exc, BackPressureError):
        return QueueFullError(str(exc))
    if isinstance(exc, RayError):  # the replica died, or Ray could not reach it
        return FlowError(f"the replica did not answer: {exc}")
    if isinstance(exc, asyncio.CancelledError):
        return FlowError("the request to the deployment was cancelled")
    return FlowError(f"the request to the deployment failed: {exc!r}")


async def _answer(response: Any) -> Any:
    return await response
