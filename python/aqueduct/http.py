"""Serve a Flow over HTTP with no Python in the web process per request.

``serve`` runs an HTTP/1.1 server written in Rust (hyper on tokio) inside
this process. It writes each request's bytes straight into the first step's
queue; ``task_from_request`` runs in a worker of the first step, before its
handler, and ``response_from_task`` in the worker that finishes the task,
after its handler; the response's bytes come back through the result queue
and Rust writes them out::

    from aqueduct import Flow, FlowStep
    from aqueduct.http import serve

    def task_from_request(request):      # request.body, .headers, .method, .path, .query
        return Task(request.json())

    def response_from_task(task):        # a dict or list (JSON), bytes, str, or a Response
        return {"result": task.result}

    serve(flow, task_from_request=task_from_request, response_from_task=response_from_task,
          host="127.0.0.1", port=8000, path="/predict")

Errors are JSON ``{"error", "type"}``: 400 for a malformed request or one
``task_from_request`` raised on (its message), 404 for another path, 413 for
a body over ``body_limit``, 500 when a handler raised or a worker died, 503
when the queue is full or the flow is down, 504 past the timeout (the
server's, or the request's ``X-Aqueduct-Timeout`` header in seconds).
``GET /health`` answers 200, or 503 while the flow cannot serve. A client
that has not sent a request's head within ``header_timeout`` seconds (10)
of its first byte, or of connecting, is disconnected, and so is a
keep-alive connection idle for ``idle_timeout`` seconds (30); a request carrying both
``Content-Length`` and ``Transfer-Encoding``, or ``Content-Length`` values that
disagree, gets a 400 and its connection is closed (RFC 9112: a proxy in
front could read its length differently). A client that closes its
connection before its answer cancels its task (workers skip it).

A ``routes`` entry may be a :class:`Route`, which can declare its body's
pydantic model: the body is validated in the first step's worker (a 422
with the field errors when it does not fit) and ``task_from_request``
finds the model in ``request.model``. ``GET /openapi.json`` describes
every route.

A route streams when ``stream`` is given (or a third element of its
``routes`` entry): each part its handlers ``emit`` is turned into bytes in
the worker — bytes as they are, text as one Server-Sent Event
(``data: <text>``), anything else as one event of its JSON; ``stream`` may
be a function of the part that makes what is sent — and written as a chunk
as soon as it comes, after a 200 with ``Content-Type: stream_content_type``
(default ``text/event-stream``). The final response's body, if any, is the
last chunk. An error after the first part ends the stream with an ``error``
event carrying the JSON error; a task that fails before its first part gets
the usual error response. The timeout bounds the whole stream. A client
that closes the connection cancels its task: the handler's ``emit`` returns
False from then on (``aqueduct_tasks_total{outcome="cancelled"}``).
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _core, openapi
from ._ipc.http_messages import (
    PartToChunk,
    Request,
    Response,
    ResponseFromTask,
    TaskFromRequest,
)
from ._ipc.topology import Topology
from ._ipc.validation import Validated, check_model
from ._runtime.metrics import processes
from .exceptions import FlowError
from .flow import Flow, runtime_of
from .logger import log
from .metrics import MAIN_PROCESS

if TYPE_CHECKING:
    from ._runtime.config import FlowConfig
    from ._runtime.runtime import FlowRuntime
    from .tracing import RequestExporter

__all__ = ["Request", "Response", "Route", "Server", "Service", "serve"]

#: Default largest request body, in bytes.
DEFAULT_BODY_LIMIT = 16 * 1024 * 1024
#: Default time, after SIGTERM, the server keeps serving with ``/ready``
#: answering 503 (a load balancer takes it out meanwhile).
DEFAULT_DRAIN_DELAY = 5.0
#: Default time stopping lets requests in flight finish (under
#: Kubernetes' 30 s grace period, with the drain delay).
DEFAULT_GRACEFUL_TIMEOUT = 25.0
#: Default time a client has to send a request's head.
DEFAULT_HEADER_TIMEOUT = 10.0
#: Default most connections open at once.
DEFAULT_MAX_CONNECTIONS = 10_000
#: Default time a request's body may take to come.
DEFAULT_BODY_TIMEOUT = 30.0
#: Default time a keep-alive connection may sit idle between requests.
DEFAULT_IDLE_TIMEOUT = 30.0
#: Default time writing an answer may wait for its client to read.
DEFAULT_WRITE_TIMEOUT = 30.0
#: Paths the server answers itself.
RESERVED_PATHS = tuple(_core.RESERVED_PATHS)
#: Where ``serve`` and ``Server`` find API keys when not given any
#: (comma-separated).
API_KEYS_ENV = "AQUEDUCT_API_KEYS"
#: The content type of a streamed response, unless said otherwise.
EVENT_STREAM = "text/event-stream"

#: What a streaming route does with its parts: True (the default encoding,
#: see the module docs) or a function making each part's chunk.
Streaming = bool | PartToChunk


@dataclass(frozen=True)
class Route:
    """A route's ends (what a ``routes`` entry may be, beside a tuple of
    its two functions and its ``stream``). ``request_model``: a pydantic
    model the body must fit — validated in the first step's worker, before
    ``task_from_request``, which finds it in ``request.model``; a body that
    does not fit gets 422 with the field errors (``detail``).
    ``response_model``: what a 200 carries, for ``/openapi.json`` only.
    ``summary``: the route's line in ``/openapi.json``. ``protocol``,
    ``model`` and ``ping`` are set by :class:`aqueduct.openai.OpenAI` for
    the routes of the OpenAI-compatible API (the front frames them);
    ``protocol`` and ``tensors`` (its :class:`aqueduct.kserve.Model`) by
    :class:`aqueduct.kserve.KServe` for the Open Inference Protocol."""

    task_from_request: TaskFromRequest
    response_from_task: ResponseFromTask
    stream: Streaming = False
    request_model: Any = None
    response_model: Any = None
    summary: str | None = None
    protocol: str = ""
    model: str | None = None
    ping: float | None = None
    tensors: Any = None

    def __post_init__(self) -> None:
        if not (callable(self.task_from_request) and callable(self.response_from_task)):
            raise ValueError("a route needs two functions")
        if not (isinstance(self.stream, bool) or callable(self.stream)):
            raise ValueError("stream must be True, False or a function")
        for model in (self.request_model, self.response_model):
            if model is not None:
                check_model(model)

    def ends(self) -> tuple[TaskFromRequest, ResponseFromTask, PartToChunk | None, bool]:
        """What the workers get: the two functions (the first behind the
        request model's validation), the part function, if any, and whether
        a big body reaches ``task_from_request`` as a view of shared memory
        (the Open Inference Protocol's tensors) rather than bytes."""
        make = self.task_from_request
        if self.request_model is not None:
            make = Validated(make, self.request_model)
        part = self.stream if callable(self.stream) else None
        return make, self.response_from_task, part, self.protocol == "kserve"


#: What a ``routes`` entry may be: a Route, or its two functions and
#: optionally how it streams.
RouteEnds = (
    Route
    | tuple[TaskFromRequest, ResponseFromTask]
    | tuple[TaskFromRequest, ResponseFromTask, Streaming]
)


def serve(
    flow: Flow,
    *,
    task_from_request: TaskFromRequest | None = None,
    response_from_task: ResponseFromTask | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    path: str = "/predict",
    routes: Mapping[str, RouteEnds] | None = None,
    timeout: float = 5.0,
    body_limit: int = DEFAULT_BODY_LIMIT,
    threads: int = 2,
    on_ready: Callable[[int], None] | None = None,
    stream: Streaming = False,
    stream_content_type: str = EVENT_STREAM,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    access_log: str | None = None,
    api_keys: Sequence[str] | None = None,
    open_metrics: bool = False,
    write_timeout: float = DEFAULT_WRITE_TIMEOUT,
    drain_delay: float = DEFAULT_DRAIN_DELAY,
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
    reuse_port: bool = False,
) -> None:
    """Starts ``flow`` (pass it not yet started: its workers get the two
    functions) and serves it on ``host:port`` (0: a free port) until SIGINT
    or SIGTERM; then drains: ``/ready`` answers 503 at once while requests
    are still served for ``drain_delay`` seconds (each answer closing its
    connection), then the server stops accepting, lets requests in flight
    finish (at most ``graceful_timeout`` seconds), ends open streams with an
    error event, stops the flow and returns. A second signal stops at once.
    ``reuse_port``: listen with ``SO_REUSEPORT``, so that a new version can
    listen on the same port while this one drains. ``on_ready`` gets the port
    once it listens. ``threads`` run the connections. To run the server
    beside other work instead, use ``Server`` and ``stop`` it yourself.
    ``routes`` maps several paths to their own pair of functions (and
    optionally a third element, as ``stream``), instead of ``path`` and the
    two functions. ``stream``: the route streams its parts (see the module
    docs). ``header_timeout``: seconds a client has to send a request's
    head, from its first byte (or from connecting); a connection that has
    not by then is closed. ``idle_timeout``: seconds a keep-alive
    connection may sit idle after an answer before it is closed.
    ``write_timeout``: seconds writing an answer may wait for a client
    that reads nothing before its connection is closed.
    ``max_connections``: most connections open at once; beyond it new ones
    wait in the listen backlog until one closes. ``body_timeout``: seconds
    a request's body may take to come; a slower one gets 408 and its
    connection is closed. ``access_log``: a file to append a line per
    answered request to (``"-"``: stderr), written by Rust; None (the
    default): no access log. ``api_keys``: a request without one of them
    (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``) gets 401, from
    Rust, in time that does not depend on the key it sent; None (the
    default): the comma-separated keys of ``AQUEDUCT_API_KEYS`` if set,
    else no key is needed. ``/health``, ``/live`` and ``/ready`` never need
    one; ``/metrics`` does unless ``open_metrics``."""
    if not drain_delay >= 0:
        raise ValueError(f"drain_delay must be >= 0, got {drain_delay}")
    server = Server(
        flow,
        task_from_request=task_from_request,
        response_from_task=response_from_task,
        host=host,
        port=port,
        path=path,
        routes=routes,
        timeout=timeout,
        body_limit=body_limit,
        threads=threads,
        stream=stream,
        stream_content_type=stream_content_type,
        header_timeout=header_timeout,
        max_connections=max_connections,
        body_timeout=body_timeout,
        idle_timeout=idle_timeout,
        access_log=access_log,
        api_keys=api_keys,
        open_metrics=open_metrics,
        write_timeout=write_timeout,
        graceful_timeout=graceful_timeout,
        reuse_port=reuse_port,
    )
    signals = _Signals()
    try:
        if on_ready is not None:
            on_ready(server.port)
        while not signals.first.wait(HEALTH_EVERY):
            server.check_health()
        log.info("Draining: /ready answers 503, serving %.3g s more", drain_delay)
        server.drain()
        until = time.monotonic() + drain_delay
        while (left := until - time.monotonic()) > 0 and not signals.second.is_set():
            signals.second.wait(min(left, HEALTH_EVERY))
            server.check_health()
        server.stop(interrupt=signals.second)
    finally:
        signals.restore()
        server.stop(0)  # at once, if the loop above did not get to stop it


#: How often ``serve`` tells the server how the flow is.
HEALTH_EVERY = 0.2


class _Signals:
    """SIGINT and SIGTERM, while ``serve`` runs in the main thread: the
    first starts the drain, the second stops at once."""

    def __init__(self) -> None:
        self.first, self.second = threading.Event(), threading.Event()
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._got)

    def _got(self, signum: int, _frame: Any) -> None:
        if self.first.is_set():
            log.warning("Second %s: stopping at once", signal.Signals(signum).name)
            self.second.set()
        self.first.set()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Server:
    """A running HTTP front of a flow (what ``serve`` blocks on; embed it to
    run the server beside other work, and ``stop`` it yourself)."""

    def __init__(
        self,
        flow: Flow,
        *,
        task_from_request: TaskFromRequest | None = None,
        response_from_task: ResponseFromTask | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        path: str = "/predict",
        routes: Mapping[str, RouteEnds] | None = None,
        timeout: float = 5.0,
        body_limit: int = DEFAULT_BODY_LIMIT,
        threads: int = 2,
        flow_name: str = "flow",
        stream: Streaming = False,
        stream_content_type: str = EVENT_STREAM,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        access_log: str | None = None,
        api_keys: Sequence[str] | None = None,
        open_metrics: bool = False,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT,
        reuse_port: bool = False,
    ) -> None:
        if flow.is_running or flow.are_steps_initialized:
            raise FlowError("serve() starts the flow itself: pass it a flow not yet started")
        seconds = {"timeout": timeout, "header_timeout": header_timeout}
        seconds |= {"body_timeout": body_timeout, "idle_timeout": idle_timeout}
        seconds |= {"write_timeout": write_timeout}
        for name, value in seconds.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        if not graceful_timeout >= 0:
            raise ValueError(f"graceful_timeout must be >= 0, got {graceful_timeout}")
        self.graceful_timeout = graceful_timeout
        routes = _routes(path, task_from_request, response_from_task, stream, routes)
        keys = _api_keys(api_keys)
        _allow_fds(max_connections)
        self._flow = flow
        self._runtime = runtime = runtime_of(flow)
        # the workers' ends: a streaming route's part function (None: the default)
        runtime.http_routes = [route.ends() for route in routes.values()]
        # an OpenAI-compatible route streams when its request asks
        streams = [
            stream_content_type if r.stream and not r.protocol else None for r in routes.values()
        ]
        models = {r.model for r in routes.values() if r.protocol.startswith("openai")}
        if len(models) > 1:
            raise ValueError(f"one model per server, not {sorted(models)}")  # type: ignore[type-var]
        pings = [r.ping for r in routes.values() if r.ping is not None]
        api = openapi.document(routes, flow_name, stream_content_type, needs_key=bool(keys))
        tensor_models = _tensor_models(list(routes.values()), runtime.config)
        flow.start()
        self._flow_name = flow_name
        # the control block's metrics slots: the steps, then the result queue's
        self._metric_slots = [*runtime.config.step_names, MAIN_PROCESS]
        topology = runtime.topology
        if topology is None:
            raise FlowError("the flow stopped while starting")
        self._generation = runtime.generation
        self._slot = slot = topology.control.claim_client()
        if slot >= topology.clients:
            clients = topology.clients
            raise FlowError(f"no client slot left for the server (Flow(clients={clients}))")
        try:
            self._native = _core.HttpServer(
                host=host,
                port=port,
                paths=list(routes),
                **self._segments(topology),
                timeout=timeout,
                body_limit=body_limit,
                threads=threads,
                streams=streams,
                header_timeout=header_timeout,
                max_connections=max_connections,
                body_timeout=body_timeout,
                idle_timeout=idle_timeout,
                write_timeout=write_timeout,
                access_log=access_log,
                api_keys=keys,
                open_metrics=open_metrics,
                openapi=json.dumps(api).encode(),
                reuse_port=reuse_port,
                trace=runtime.config.tracing,
                protocols=[r.protocol for r in routes.values()],
                model=next(iter(models), None),
                ping=min(pings, default=15.0),
                kserve=tensor_models,
            )
        except BaseException:
            asyncio.run(flow.stop(graceful=False))
            raise
        self.port: int = self._native.port
        self._stopped = False
        self._traces: RequestExporter | None = None
        if runtime.config.tracing:
            from .tracing import RequestExporter

            self._traces = RequestExporter(self._native.take_traces, runtime.config.step_names)
        self.check_health()
        log.info("Serving the flow on http://%s:%d %s", host, self.port, " ".join(routes))
        if keys:
            log.info("Requests need one of %d API key(s) (/health does not)", len(keys))

    def _segments(self, topology: Topology) -> dict[str, Any]:
        """The segments the server uses, as its client slot sees them."""
        slot = self._slot
        return {
            "steps": topology.queues[: topology.steps],
            "results": topology.result_queue(slot),
            "control": topology.control,
            "arena": topology.arenas[slot],
            "arenas": topology.arenas,  # where workers place big answers
            "client": slot,
        }

    def check_health(self) -> None:
        """Every fraction of a second: tells the server whether the flow
        serves (``/health``, 503s), moves it onto the segments of a flow that
        healed, and has the flow heal when the server found its result queue
        corrupt."""
        runtime = self._runtime
        topology = runtime.topology
        if runtime.generation != self._generation and topology is not None:
            if not runtime.healer.healing:
                self._native.retarget(**self._segments(topology))
                self._generation = runtime.generation
                log.warning("The HTTP server moved onto the flow's fresh shared memory")
        elif (corrupt := self._native.corruption()) is not None:
            runtime.seat.shared_memory_corrupt(corrupt)  # the flow heals
        self._native.set_failure(runtime.failure)
        supervisor = runtime.supervisor
        workers = supervisor.workers if supervisor is not None else []
        if supervisor is not None and supervisor.on_change is None:
            # from now on readiness follows each change of the workers at once
            supervisor.on_change = lambda: self._native.set_unready(_missing_workers(runtime))
        self._native.set_unready(_missing_workers(runtime))
        self._native.set_names(self._flow_name, self._metric_slots, processes(workers))

    @property
    def phase(self) -> str:
        """``"serving"``, ``"draining"``, ``"closing"`` or ``"stopped"``."""
        return self._native.phase

    def drain(self) -> None:
        """``/ready`` answers 503 from now on, and each answer closes its
        connection; requests are still accepted and served."""
        self._native.drain()

    def stop(self, grace: float | None = None, *, interrupt: threading.Event | None = None) -> None:
        """Stops accepting, lets requests in flight finish (at most
        ``grace`` seconds, by default ``graceful_timeout``; less if
        ``interrupt`` is set meanwhile), ends the rest (an open stream with
        an error event, a waiting request with a 503), then stops the flow
        (whose workers forget the route functions). Stopping a stopped
        server does nothing."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.graceful_timeout if grace is None else grace
        native = self._native
        native.close()
        until = time.monotonic() + grace
        interrupted = (interrupt or threading.Event()).wait
        while native.connections and (left := until - time.monotonic()) > 0:
            if interrupted(min(left, 0.01)):
                break
        if (supervisor := self._runtime.supervisor) is not None:
            supervisor.on_change = None
        native.stop(0)
        if self._traces is not None:
            self._traces.stop()
        asyncio.run(self._flow.stop(graceful=False))
        self._runtime.http_routes = None
        log.info("The HTTP server stopped")


def _tensor_models(routes: Sequence[Route], config: FlowConfig) -> bytes | None:
    """What the front is told of the models of the Open Inference Protocol
    among ``routes`` (``aqueduct.kserve``): this package's version, and what
    each model says of itself; None when there are none."""
    models = [
        route.tensors.served(index, config.step_names, config.priorities)
        for index, route in enumerate(routes)
        if route.protocol == "kserve"
    ]
    if not models:
        return None
    names = [m["name"] for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"two models with one name among {names}")
    return json.dumps({"version": _version(), "models": models}).encode()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aqueduct")
    except PackageNotFoundError:
        return "unknown"


def _missing_workers(runtime: FlowRuntime) -> list[str | None]:
    """Per step, why it lacks workers now (fewer ready than it starts with:
    starting, or respawning one that died), or None."""
    supervisor, specs = runtime.supervisor, runtime.specs
    names = runtime.config.step_names
    if supervisor is None or specs is None:
        return ["the flow has no workers"] * len(names)
    reasons: list[str | None] = []
    for index, name in enumerate(names):
        ready = sum(w.ready and not (w.dead or w.retiring) for w in supervisor.of_step(index))
        wanted = specs.first(index)
        reasons.append(
            f"{ready} of {wanted} workers of {name} are ready" if ready < wanted else None
        )
    return reasons


def _routes(
    path: str,
    task_from_request: TaskFromRequest | None,
    response_from_task: ResponseFromTask | None,
    stream: Streaming,
    routes: Mapping[str, RouteEnds] | None,
) -> dict[str, Route]:
    """Path -> Route, from ``routes`` or from ``path``, the two functions
    and ``stream``."""
    single = task_from_request is not None or response_from_task is not None
    given: dict[str, Any]
    if routes is not None:
        if single or stream:
            raise ValueError("give either routes or task_from_request/response_from_task/stream")
        given = dict(routes)
    elif task_from_request is None or response_from_task is None:
        raise ValueError("task_from_request and response_from_task are both needed")
    else:
        given = {path: (task_from_request, response_from_task, stream)}
    reserved = set(RESERVED_PATHS) & set(given)
    if not given or reserved:
        raise ValueError(f"routes must be some paths other than {sorted(reserved) or '/health'}")
    out = {}
    for route, ends in given.items():
        if not isinstance(route, str) or not route.startswith("/"):
            raise ValueError(f"route {route!r} is not a path")
        if isinstance(ends, Route):
            out[route] = ends
            continue
        if not isinstance(ends, tuple | list) or len(ends) not in (2, 3):
            raise ValueError(f"route {route!r} needs two functions (or a Route)")
        try:
            out[route] = Route(*ends)
        except ValueError as exc:
            raise ValueError(f"route {route!r}: {exc}") from None
    return out


def split_api_keys(text: str) -> list[str]:
    """The keys of a comma-separated list (``AQUEDUCT_API_KEYS``, ``--api-keys``)."""
    return [key.strip() for key in text.split(",") if key.strip()]


def _api_keys(given: Sequence[str] | None) -> list[str]:
    """The keys requests need: those given, else ``AQUEDUCT_API_KEYS``'s."""
    if given is None:
        given = split_api_keys(os.environ.get(API_KEYS_ENV, ""))
    elif isinstance(given, str):
        raise TypeError("api_keys is a list of keys, not one string")
    keys = [key.strip() for key in given if key.strip()]
    for key in keys:
        if not key.isprintable() or " " in key:
            raise ValueError("an API key is printable characters without spaces")
    return keys


#: File descriptors a server needs besides one per connection (segments,
#: eventfds, pipes, logs).
FDS_BESIDES_CONNECTIONS = 256


def _allow_fds(max_connections: int) -> None:
    """Raises this process's soft limit on open files (up to the hard one)
    so that ``max_connections`` can be open at once; warns when the hard
    limit is lower (connections beyond it wait to be accepted)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FDS_BESIDES_CONNECTIONS
    if soft != resource.RLIM_INFINITY and soft < want:
        raised = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        if raised < want:
            log.warning(
                "max_connections=%d needs %d open files, the hard limit is %d: "
                "connections beyond it wait to be accepted",
                max_connections,
                want,
                hard,
            )


@dataclass
class Service:
    """A flow, not yet started, and its HTTP ends: what ``serve`` takes
    besides the network and its limits, bundled so that a module can name
    it and ``aqueduct serve module:attr`` serve it (``attr`` may also be a
    function of no arguments returning one)::

        service = Service(Flow(FlowStep(Model())), task_from_request=make,
                          response_from_task=answer)

    The fields mean what the arguments of ``serve`` of the same names mean,
    and are checked when the service is made."""

    flow: Flow
    task_from_request: TaskFromRequest | None = None
    response_from_task: ResponseFromTask | None = None
    path: str = "/predict"
    routes: Mapping[str, RouteEnds] | None = None
    stream: Streaming = False
    stream_content_type: str = EVENT_STREAM

    def __post_init__(self) -> None:
        if not isinstance(self.flow, Flow):
            raise TypeError(f"Service needs a Flow, got {type(self.flow).__name__}")
        _routes(
            self.path, self.task_from_request, self.response_from_task, self.stream, self.routes
        )

    def serve(self, **options: Any) -> None:
        """``serve`` with this service's flow and ends; ``options`` are the
        rest of ``serve``'s arguments (host, port, limits...)."""
        serve(
            self.flow,
            task_from_request=self.task_from_request,
            response_from_task=self.response_from_task,
            path=self.path,
            routes=self.routes,
            stream=self.stream,
            stream_content_type=self.stream_content_type,
            **options,
        )
