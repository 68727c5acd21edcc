"""Flow(tracing=True): OpenTelemetry spans of Flow.process calls and of the
HTTP front's requests, with a queue and a handle span per step, made in
the calling process through its own tracer provider. Every wait is bounded."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from aqueduct import Flow, FlowStep
from aqueduct.exceptions import HandlerError
from aqueduct.tracing import record
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from support import WAIT, FailOn, Recorder, Task, eventually
from test_http import call, service

EXPORTED = InMemorySpanExporter()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    """This process's spans (one provider for the whole test session: the
    OpenTelemetry API sets it once)."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTED))
        trace.set_tracer_provider(provider)
    EXPORTED.clear()
    return EXPORTED


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


async def test_process_is_a_span_with_a_queue_and_a_handle_span_per_step(make_flow, spans):
    flow = make_flow(FlowStep(Recorder("first")), FlowStep(Recorder("second")), tracing=True)
    names = flow._runtime.config.step_names
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as request:
        task = Task(3, sleep=0.05)
        assert await flow.process(task, timeout_sec=WAIT)
    assert task.trail == ["first", "second"]
    assert "_aqueduct_trace" not in vars(task), "the times are the spans', not the task's"
    got = by_name(spans.get_finished_spans())
    expected = {"request", "aqueduct.process"} | {
        f"{n} {w}" for n in names for w in ("queue", "handle")
    }
    assert set(got) == expected
    process = got["aqueduct.process"]
    assert (
        process.parent is not None and process.parent.span_id == request.get_span_context().span_id
    )
    assert process.attributes is not None and process.attributes["aqueduct.task_id"] == task.task_id
    edges = []
    for name in names:
        for what in ("queue", "handle"):
            span = got[f"{name} {what}"]
            assert span.parent is not None and span.parent.span_id == process.context.span_id
            assert span.context.trace_id == request.get_span_context().trace_id
            edges.append((span.start_time, span.end_time))
            if what == "handle":  # the handler sleeps 50 ms per batch
                assert span.end_time - span.start_time >= 45_000_000, name
    # queue, handle, queue, handle: one after the other, inside the call
    flat = [t for edge in edges for t in edge]
    assert flat == sorted(flat)
    assert process.start_time <= flat[0] and flat[-1] <= process.end_time


async def test_a_failed_process_is_an_error_span_and_untraced_flows_record_nothing(
    make_flow, spans
):
    traced = make_flow(FailOn(2), tracing=True)
    with pytest.raises(HandlerError):
        await traced.process(Task(2), timeout_sec=WAIT)
    (failed,) = spans.get_finished_spans()
    assert failed.name == "aqueduct.process"
    assert failed.status.status_code == StatusCode.ERROR
    spans.clear()
    plain = make_flow(Recorder("only"))
    task = Task(1)
    assert await plain.process(task, timeout_sec=WAIT)
    assert task.trail == ["only"]
    assert spans.get_finished_spans() == ()
    assert "_aqueduct_trace" not in vars(task)


def test_tracing_without_opentelemetry_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # not installed
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ImportError, match=r"aqueduct\[otel\]"):
        Flow(Recorder("x"), tracing=True)


def test_a_continuous_step_is_one_handle_span_from_its_first_iteration_to_its_last():
    task = Task(1)
    for started, ended in [(10, 20), (25, 30), (31, 40)]:
        record([task], 0, started, ended)
    record([task], 1, 50, 60)
    record([task], 1, 61, 70)
    assert vars(task)["_aqueduct_trace"] == [(0, 10, 40), (1, 50, 70)]


PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_http_requests_are_spans_under_their_traceparent(tmp_path: Path):
    written = tmp_path / "spans.jsonl"

    def lines() -> list[dict[str, object]]:
        text = written.read_text() if written.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    with service(TRACE_FILE=str(written)) as (port, _):
        status, headers, _ = call(
            port, {"x": 5}, headers={"traceparent": PARENT, "X-Request-ID": "r-1"}
        )
        assert status == 200
        assert "x-aqueduct-step-times" not in headers, "the front takes it off the answer"
        assert call(port, {"x": 6})[0] == 200  # no traceparent: a trace of its own
        assert call(port, path="/nowhere", method="GET")[0] == 404
        eventually(lambda: len(lines()) >= 5 + 5 + 1, what=lines)
    spans = lines()
    requests = [s for s in spans if s["name"] in ("POST /predict", "GET /nowhere")]
    assert len(requests) == 3
    given, own, missing = requests
    assert given["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert given["parent_id"] == "b7ad6b7169203331"
    assert given["attributes"] == {
        "http.request.method": "POST",
        "url.path": "/predict",
        "http.response.status_code": 200,
        "aqueduct.request_id": "r-1",
    }
    assert own["parent_id"] is None and own["trace_id"] != given["trace_id"]
    assert missing["attributes"]["http.response.status_code"] == 404  # type: ignore[index]
    for request in (given, own):
        children = [s for s in spans if s["parent_id"] == request["span_id"]]
        assert [c["name"].split()[-1] for c in children] == ["queue", "handle"] * 2  # type: ignore[union-attr]
        assert all(c["trace_id"] == request["trace_id"] for c in children)
        times = [t for c in children for t in (c["start"], c["end"])]
        assert times == sorted(times)
        assert request["start"] <= times[0] and times[-1] <= request["end"]  # type: ignore[operator]
    assert not [s for s in spans if s["parent_id"] == missing["span_id"]]
    assert time.time_ns() - given["end"] < 600 * 10**9  # type: ignore[operator]  # wall-clock times
