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
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..exceptions import AqueductError, FlowError, QueueFullError, TaskTimeoutError
from ..flow import Flow
from ..logger import log
from ..task import BaseTask
from .utils import dead_flow, error_status, get_start_timeout

__all__ = [
    "DEFAULT_MAX_ONGOING_REQUESTS",
    "FlowHandle",
    "FlowReplica",
    "flow_deployment",
    "task_fields",
]

#: Ray Serve's own default (5 requests in flight per replica) would starve a
#: Flow's batching; a replica takes this many unless ``max_ongoing_requests``
#: is given.
DEFAULT_MAX_ONGOING_REQUESTS = 256

#: Fields of a task that are the flow's bookkeeping, not results.
_INTERNAL_FIELDS = frozenset({"expiration_time", "priority"})

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


def _error_response(status: int, exc: BaseException | str) -> JSONResponse:
    if isinstance(exc, str):
        return JSONResponse({"error": exc}, status_code=status)
    return JSONResponse({"error": str(exc), "type": type(exc).__name__}, status_code=status)


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class FlowReplica:
    """What each replica of a :func:`flow_deployment` runs: it builds a Flow,
    starts it, serves ``process`` calls (deployment handle) and HTTP requests
    (``__call__``), reports the Flow's health and stops it on shutdown."""

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
            flow.start(timeout=start_timeout)
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

    async def __call__(self, request: Request) -> Response:
        """HTTP ingress: ``task_from_request`` makes the task, the Flow
        handles it, ``response_from_task`` (default: the task's fields as
        JSON) makes the answer. 400 for a request that makes no task, 503 for
        a full queue, 504 for a timeout, 500 for other flow errors."""
        if self._task_from_request is None:
            return _error_response(
                404, "this deployment has no HTTP ingress: give flow_deployment a task_from_request"
            )
        try:
            task = await _maybe_await(self._task_from_request(request))
        except Exception as exc:  # the request's fault, not the flow's
            return _error_response(400, exc)
        if not isinstance(task, BaseTask):
            return _error_response(
                500, f"task_from_request returned {type(task).__name__}, not a BaseTask"
            )
        try:
            await self._flow.process(task, self._timeout_sec)
        except AqueductError as exc:
            return _error_response(error_status(exc) or 500, exc)
        result = await _maybe_await(self._response_from_task(task))
        if isinstance(result, Response):
            return result
        try:
            body = json.dumps(result, default=_json_default).encode()
        except (TypeError, ValueError) as exc:
            return _error_response(
                500, f"the result is not JSON serializable ({exc}); give a response_from_task"
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
    start = start_timeout if start_timeout is not None else get_start_timeout()

    class Replica(FlowReplica):
        # the arguments travel with the class, so ``.bind()`` takes none
        def __init__(self) -> None:
            super().__init__(build_flow, task_from_request, response_from_task, timeout_sec, start)

    return serve.deployment(name=name, **options)(Replica)


class FlowHandle:
    """Calls a flow deployment the way code calls a Flow:
    ``await FlowHandle(handle).process(task, timeout_sec)`` sets the handlers'
    fields on ``task`` and raises the flow's own exceptions.

    A replica that dies with the task raises ``FlowError``; Ray Serve's
    back-pressure (``max_queued_requests``) raises ``QueueFullError``; no
    answer within ``timeout_sec`` + ``wait_margin`` seconds (routing, a
    replica starting) raises ``TaskTimeoutError``.
    """

    def __init__(self, handle: Any, wait_margin: float = 30.0) -> None:
        self._handle = handle
        self._wait_margin = wait_margin

    @property
    def handle(self) -> Any:
        """The deployment handle behind it (``serve.handle.DeploymentHandle``)."""
        return self._handle

    async def process(self, task: BaseTask, timeout_sec: float = 5.0) -> bool:
        if not timeout_sec or timeout_sec <= 0:
            raise ValueError(f"timeout_sec must be > 0, got {timeout_sec!r}")
        response = self._handle.process.remote(task, timeout_sec)
        try:
            done = await asyncio.wait_for(_answer(response), timeout_sec + self._wait_margin)
        except TimeoutError:
            response.cancel()
            raise TaskTimeoutError(
                f"no answer from the deployment within {timeout_sec + self._wait_margin} s"
            ) from None
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, AqueductError):
                raise cause from None
            raise FlowError(f"the replica failed the task: {cause!r}") from exc
        except BackPressureError as exc:
            raise QueueFullError(str(exc)) from exc
        except RayError as exc:  # the replica died, or Ray could not reach it
            raise FlowError(f"the replica did not answer: {exc}") from exc
        task.update(done)
        return True


async def _answer(response: Any) -> Any:
    return await response
