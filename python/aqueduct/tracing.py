"""OpenTelemetry spans of tasks: ``Flow(..., tracing=True)``, with the
optional extra (``pip install 'aqueduct[otel]'``).

Every ``Flow.process`` call is a span ``aqueduct.process``, a child of the
span current where it was called (a web framework's request span, when it
is instrumented); every request the HTTP front (``aqueduct.http``) answers
is a span ``METHOD /path``, a child of the request's W3C ``traceparent``
when it has one. Each has two children per step the task went through:
``<step> queue`` (from when the task was sent to the step until its batch
began) and ``<step> handle`` (its batch's ``handle`` call; a continuous
step's iterations from the first to the last). The spans are made in the
process that called ``process`` or serves HTTP, through the tracer
provider configured there (``opentelemetry.trace.set_tracer_provider``), so
its exporter sends them: workers only note on each task when they handled
it (CLOCK_MONOTONIC, one clock for every process of the machine), and the
last step of an HTTP task hands those times to the front in a header the
front takes off the answer. A flow without tracing runs none of this.

Not traced: the parts of a stream (an HTTP stream's span ends when its
first part is sent, without step spans), and ``Flow.stream``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import _core
from ._core import STEP_TIMES_HEADER
from ._ipc.http_messages import Response
from .logger import log

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

__all__ = ["TRACE_FIELD", "RequestExporter", "processing", "record", "require", "traced_route"]

#: The task attribute workers note their times in: ``[(step, started_ns, ended_ns)]``.
TRACE_FIELD = "_aqueduct_trace"
#: The instrumentation scope of aqueduct's spans.
SCOPE = "aqueduct"

#: ``(step, started_ns, ended_ns)``, CLOCK_MONOTONIC.
StepTime = tuple[int, int, int]


def require() -> None:
    """Raises ImportError with what to install when OpenTelemetry is not there."""
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "Flow(tracing=True) needs OpenTelemetry: pip install 'aqueduct[otel]'"
        ) from exc


# -- in the workers -----------------------------------------------------------------


def record(tasks: Sequence[Any], step: int, started_ns: int, ended_ns: int) -> None:
    """Notes on each task of a batch that ``step`` handled it from
    ``started_ns`` to ``ended_ns`` (a later iteration of the same step, in
    a continuous batch, moves the end). A task without attributes is left
    alone."""
    for task in tasks:
        fields = getattr(task, "__dict__", None)
        if fields is None:
            continue
        times = fields.get(TRACE_FIELD)
        if times is None:
            fields[TRACE_FIELD] = [(step, started_ns, ended_ns)]
        elif times[-1][0] == step:
            times[-1] = (step, times[-1][1], ended_ns)
        else:
            times.append((step, started_ns, ended_ns))


def traced_route(ends: tuple[Any, Any, Any, bool]) -> tuple[Any, Any, Any, bool]:
    """A route's functions with its ``response_from_task`` putting the
    task's step times on the answer, for the front."""
    make, respond, chunk, borrow = ends

    def respond_traced(task: Any) -> Any:
        made = respond(task)
        times = getattr(task, "__dict__", {}).get(TRACE_FIELD)
        if not times:
            return made
        header = (STEP_TIMES_HEADER, _core.step_times(times))
        if isinstance(made, Response):
            given = made.headers
            pairs = list(given.items()) if isinstance(given, dict) else list(given)
            return replace(made, headers=[*pairs, header])
        return Response(body=made, headers=[header])

    return make, respond_traced, chunk, borrow


# -- where the spans are made ---------------------------------------------------------


def _tracer() -> Tracer:
    from opentelemetry import trace

    return trace.get_tracer(SCOPE)


def _steps(
    tracer: Tracer,
    parent: Span,
    names: Sequence[str],
    sent_ns: int,
    times: Sequence[StepTime],
    to_wall: int,
) -> None:
    """The queue and handle spans of each step under ``parent``."""
    from opentelemetry import trace

    context = trace.set_span_in_context(parent)
    waited_from = sent_ns
    for step, started, ended in times:
        name = names[step] if 0 <= step < len(names) else f"step {step}"
        attributes = {"aqueduct.step": name}
        if started >= waited_from:
            queued = tracer.start_span(
                f"{name} queue",
                context=context,
                start_time=waited_from + to_wall,
                attributes=attributes,
            )
            queued.end(end_time=started + to_wall)
        handled = tracer.start_span(
            f"{name} handle", context=context, start_time=started + to_wall, attributes=attributes
        )
        handled.end(end_time=ended + to_wall)
        waited_from = ended


def _to_wall() -> int:
    """What turns a CLOCK_MONOTONIC time into one since the epoch, in ns."""
    return time.time_ns() - time.monotonic_ns()


@contextmanager
def processing(task: Any, step_names: Sequence[str]) -> Iterator[None]:
    """``Flow.process(task)`` as a span, with the steps' spans under it."""
    tracer = _tracer()
    fields = task.__dict__
    fields.pop(TRACE_FIELD, None)  # a task processed again starts afresh
    attributes = {"aqueduct.task_id": task.task_id}
    with tracer.start_as_current_span("aqueduct.process", attributes=attributes) as span:
        sent = time.monotonic_ns()
        try:
            yield
        finally:
            times = fields.pop(TRACE_FIELD, None) or []
            _steps(tracer, span, step_names, sent, times, _to_wall())


#: What ``HttpServer.take_traces`` gives per request.
Finished = tuple[str, str | None, str | None, str, str, int, int, int, list[StepTime]]


def export_requests(finished: Sequence[Finished], step_names: Sequence[str]) -> None:
    """The spans of requests the HTTP front answered."""
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    tracer, propagator, to_wall = _tracer(), TraceContextTextMapPropagator(), _to_wall()
    for request_id, parent, state, method, path, status, received, answered, times in finished:
        carrier = {"traceparent": parent or "", "tracestate": state or ""}
        context = propagator.extract(carrier, context=Context())
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.path": path,
            "http.response.status_code": status,
            "aqueduct.request_id": request_id,
        }
        span = tracer.start_span(
            f"{method} {path}",
            context=context,
            kind=SpanKind.SERVER,
            start_time=received + to_wall,
            attributes=attributes,
        )
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        _steps(tracer, span, step_names, received, times, to_wall)
        span.end(end_time=answered + to_wall)


class RequestExporter:
    """A thread that makes the spans of the requests a traced HTTP front
    answered, as they come (``take`` is ``HttpServer.take_traces``)."""

    #: How long one wait for answered requests lasts.
    TICK = 0.2

    def __init__(
        self,
        take: Callable[[float], tuple[list[Finished], int]],
        step_names: Sequence[str],
    ) -> None:
        self._take, self._names = take, list(step_names)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aqueduct-traces", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self.export_once(self.TICK)

    def export_once(self, timeout: float) -> None:
        finished, dropped = self._take(timeout)
        if dropped:
            log.warning("%d requests were not traced: the span exporter fell behind", dropped)
        if finished:
            try:
                export_requests(finished, self._names)
            except Exception:
                log.exception("Making the spans of %d requests failed", len(finished))

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the thread, after the spans of what was answered until now."""
        self._stopped.set()
        self._thread.join(timeout)
        self.export_once(0)
