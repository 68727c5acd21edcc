"""aqueduct.http: the Rust HTTP front, started for real and talked to over
loopback with a real HTTP client. Every wait is bounded."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import WAIT, children_of, eventually, running

SERVICE = Path(__file__).parent / "served_flow.py"


@contextmanager
def service(script: Path = SERVICE, **env: str) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """Runs ``script``; yields its port and process; stops it after."""
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.split()[-1].isdigit(), line
        yield int(line.split()[-1]), proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=WAIT)
        if proc.stdout is not None:
            proc.stdout.close()


def call(
    port: int,
    body: object = None,
    *,
    path: str = "/predict",
    method: str = "POST",
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {})
    response = conn.getresponse()
    out = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    if own:
        conn.close()
    return out


def test_requests_become_tasks_and_tasks_responses():
    with service() as (port, _):
        status, headers, body = call(port, {"x": 5})
        assert (status, json.loads(body)) == (200, {"y": 20, "steps": ["a", "b"], "batch": 1})
        assert headers["content-type"] == "application/json"
        # the second step's condition declines x == 0: the first answers
        status, _, body = call(port, {"x": 0})
        assert (status, json.loads(body)["steps"]) == (200, ["a"])
        status, headers, body = call(port, {"x": "teapot"})
        assert (status, headers["x-pot"], body) == (418, "tea", b"short and stout")
        binary = {"content-type": "application/octet-stream"}
        status, _, body = call(port, b"\0" * 100, headers=binary)
        assert json.loads(body)["y"] == 400


def test_a_response_keeps_repeated_headers_and_an_impossible_status_is_an_error():
    with service() as (port, _):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        conn.request("POST", "/predict", body=json.dumps({"x": "cookies"}).encode())
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        assert response.headers.get_all("set-cookie") == ["a=1", "b=2"]
        conn.close()
        status, _, body = call(port, {"x": "no such status"})
        assert status == 500 and "1000" in json.loads(body)["error"], body


def test_errors_are_json_with_the_status_they_stand_for():
    with service(BODY_LIMIT="1000") as (port, _):
        cases = [
            (call(port, b"not json"), 400, "JSONDecodeError"),
            (call(port, {"nox": 1}), 400, "KeyError"),
            (call(port, method="GET"), 400, "ValueError"),
            (call(port, {"x": "boom"}), 500, "ValueError"),
            (call(port, {"x": 1}, path="/elsewhere"), 404, "NotFound"),
            (call(port, b"x" * 2000), 413, "PayloadTooLarge"),
        ]
        for (status, headers, body), want_status, want_type in cases:
            assert status == want_status, body
            assert headers["content-type"] == "application/json"
            error = json.loads(body)
            assert error["type"] == want_type and error["error"], error
        assert "boom!" in json.loads(call(port, {"x": "boom"})[2])["error"]
        assert call(port, {"x": 2})[0] == 200, "it keeps serving"


def test_a_request_past_its_timeout_gets_504_and_is_skipped():
    with service(TIMEOUT="0.5") as (port, _):
        started = time.monotonic()
        status, _, body = call(port, {"x": 1, "sleep": 2})
        assert status == 504 and json.loads(body)["type"] == "TaskTimeoutError"
        assert time.monotonic() - started < 1.5
        # the header sets a request's own timeout
        status, _, _ = call(port, {"x": 1, "sleep": 0.8}, headers={"X-Aqueduct-Timeout": "5"})
        assert status == 200


def test_a_full_queue_gets_503_at_once():
    with service(QUEUE_SIZE="1") as (port, _):
        results: list[int] = []

        def slow() -> None:
            results.append(call(port, {"x": 1, "sleep": 1})[0])

        threads = [threading.Thread(target=slow) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert 503 in results and 200 in results, results


def test_keep_alive_and_concurrent_clients():
    with service(BATCH="8") as (port, _):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        for x in range(20):  # one connection, many requests
            status, _, body = call(port, {"x": x}, conn=conn)
            assert status == 200 and json.loads(body)["y"] == x * 4
        conn.close()
        wrong: list[object] = []
        batches: list[int] = []

        def client(n: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
            for i in range(25):
                x = n * 100 + i + 1
                status, _, body = call(port, {"x": x}, conn=conn)
                answer = json.loads(body)
                if status != 200 or answer["y"] != x * 4:
                    wrong.append((status, answer))
                batches.append(answer.get("batch", 0))
            conn.close()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert not wrong, wrong[:3]
        assert len(batches) == 800
        assert max(batches) > 1, "concurrent requests share batches"


def test_answers_of_any_size_travel_and_their_blocks_are_freed_once_written():
    with service(BIG_ANSWER=str(64 << 20)) as (port, _):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        # 18 x 64 MiB: more than a worker's arena (1 GiB) holds, unless each
        # block is freed once its answer is written
        for _ in range(18):
            status, _, body = call(port, {"x": "big answer"}, conn=conn)
            assert status == 200, body[:200]
            assert len(body) == 64 << 20 and body.count(b"x") == len(body)
        conn.close()
        assert call(port, {"x": 1})[0] == 200


def test_a_numpy_array_answer_is_its_bytes():
    import numpy as np

    for n in (1000, 8 << 20):  # inline, and by reference (64 MiB)
        with service(BIG_ANSWER=str(n)) as (port, _):
            status, headers, body = call(port, {"x": "array answer"})
            assert status == 200
            assert headers["content-type"] == "application/octet-stream"
            assert (np.frombuffer(body, dtype=np.int64) == np.arange(n)).all()


def test_a_client_that_leaves_before_a_big_answer_is_written_frees_its_block():
    with service(BIG_ANSWER=str(256 << 20)) as (port, _):
        # 8 x 256 MiB answers whose clients leave at once: their blocks would
        # fill the worker's arena (1 GiB) if they were not freed
        for _ in range(8):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
                body = b'{"x": "big answer"}'
                sock.sendall(
                    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
                    + body
                )
                assert sock.recv(12) == b"HTTP/1.1 200"
        status, _, answer = call(port, {"x": "big answer"})
        assert status == 200 and len(answer) == 256 << 20


def test_big_bodies_travel():
    with service() as (port, _):
        body = os.urandom(8 << 20)
        status, _, answer = call(port, body, headers={"content-type": "application/octet-stream"})
        assert status == 200 and json.loads(answer)["y"] == (8 << 20) * 2 * 2


def test_a_worker_killed_mid_request_gives_500_and_the_server_serves_on():
    with service() as (port, _):
        status, _, body = call(port, {"x": "die"})
        assert status == 500 and json.loads(body)["type"] == "WorkerDiedError", body
        eventually(lambda: call(port, {"x": 3})[0] == 200, what="the respawned worker serving")


def test_sigterm_finishes_requests_in_flight_then_stops_everything(tmp_path):
    with service() as (port, proc):
        workers = children_of(proc.pid)
        assert workers
        outcome: list[int] = []
        reached = tmp_path / "reached"
        body = {"x": 1, "sleep": 1, "reached": str(reached)}
        slow = threading.Thread(target=lambda: outcome.append(call(port, body)[0]))
        slow.start()
        eventually(reached.exists, what="the request in a worker")
        proc.send_signal(signal.SIGTERM)
        slow.join(WAIT)
        assert outcome == [200]
        assert proc.wait(timeout=WAIT) == 0
        assert "stopped" in proc.stdout.read()  # type: ignore[union-attr]
        eventually(lambda: not any(map(running, workers)), what="workers gone")
        with pytest.raises(OSError):
            call(port, {"x": 1})


def test_killing_the_server_takes_its_workers_with_it():
    with service() as (port, proc):
        workers = children_of(proc.pid)
        assert call(port, {"x": 1})[0] == 200
        proc.kill()
        proc.wait(timeout=WAIT)
        eventually(lambda: not any(map(running, workers)), what="workers gone with the server")


def test_the_example_service_scores_in_batches():
    example = Path(__file__).parent.parent / "examples" / "http_service.py"
    with service(example, PORT="0") as (port, _):
        status, _, body = call(port, {"values": [1, 2, 3, 4]})
        assert status == 200 and isinstance(json.loads(body)["score"], float)
        status, _, body = call(port, {"values": []})
        assert status == 400 and "non-empty" in json.loads(body)["error"]


def test_arrays_travel_between_steps_through_shared_memory():
    with service() as (port, _):
        array = bytes(range(256)) * 4096  # 1 MiB: through the arena, then between steps
        status, _, body = call(port, array, headers={"content-type": "application/x-array"})
        assert status == 200, body
        assert json.loads(body)["y"] == sum(range(256)) * 4096 * 4


def test_the_server_follows_the_flow_when_it_heals():
    with service() as (port, _):
        assert call(port, {"x": 1})[0] == 200
        status, _, body = call(port, {"x": "scribble"})
        assert status in (500, 503, 504), body  # it never hangs
        # on fresh segments, same server
        eventually(lambda: call(port, {"x": 3})[0] == 200, what="the server serving again")
        assert json.loads(call(port, {"x": 4})[2])["y"] == 16


def test_a_corrupt_arena_heals_instead_of_refusing_big_bodies():
    big = {"content-type": "application/octet-stream"}
    with service() as (port, _):
        assert call(port, b"x" * (1 << 20), headers=big)[0] == 200
        assert call(port, {"x": "scribble arenas"})[0] == 200
        status, _, body = call(port, b"x" * (1 << 20), headers=big)
        assert status == 500 and b"SharedMemoryCorruptError" in body, body

        def served() -> bool:
            try:  # on fresh segments: every one, not every other one
                return all(call(port, b"x" * (1 << 20), headers=big)[0] == 200 for _ in range(6))
            except OSError:  # a 503 sent before the body was read closes the connection
                return False

        eventually(served, what="big bodies served from fresh shared memory")


def _series(page: str) -> set[tuple[str, tuple[str, ...]]]:
    """(sample name, label names) of every sample of a Prometheus page."""
    out = set()
    for line in page.splitlines():
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            labels = tuple(sorted(p.split("=")[0] for p in rest.split("}")[0].split(",") if p))
            out.add((name, labels))
    return out


async def test_metrics_are_the_python_exporters_served_by_rust():
    prometheus_client = pytest.importorskip("prometheus_client")
    from aqueduct import Flow, FlowStep
    from aqueduct.metrics.prometheus import register
    from served_flow import Double, Job

    with service() as (port, _):
        for x in range(5):
            assert call(port, {"x": x})[0] == 200
        status, headers, page = call(port, path="/metrics", method="GET")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = page.decode()
    assert 'aqueduct_tasks_total{flow="flow",outcome="done"} 5.0' in text
    assert 'aqueduct_tasks_handled_total{flow="flow",step="step1_Double"} 5.0' in text
    assert 'aqueduct_memory_bytes{flow="flow",process="step2_Double"}' in text
    assert 'aqueduct_workers{flow="flow",step="step1_Double",state="running"} ' in text
    # the same series as the Python exporter of the same flow
    flow = Flow(FlowStep(Double("a")), FlowStep(Double("b")))
    flow.start(timeout=WAIT)
    try:
        await flow.process(Job(1), timeout_sec=WAIT)
        registry = prometheus_client.CollectorRegistry()
        register(flow, registry=registry)
        python = prometheus_client.generate_latest(registry).decode()
    finally:
        await flow.stop()
    assert _series(python) <= _series(text), _series(python) - _series(text)


def test_health_says_503_while_a_step_is_down():
    with service(TIMEOUT="1") as (port, _):
        assert call(port, path="/health", method="GET")[0] == 200

        def down() -> bool:
            if call(port, path="/health", method="GET")[0] == 503:
                return True
            call(port, {"x": "die"})  # its worker dies, again and again
            return False

        eventually(down, every=0.2, what="the step going down")
        status, _, body = call(port, {"x": 1})
        assert status == 503 and "down" in json.loads(body)["error"], body


def test_priorities_pass_through_a_header():
    with service(PRIORITIES="2") as (port, _):
        status, _, body = call(port, {"x": 2}, headers={"X-Aqueduct-Priority": "1"})
        assert status == 200 and json.loads(body)["y"] == 8


def test_several_routes_have_their_own_functions():
    with service(ROUTES="1") as (port, _):
        status, _, body = call(port, {"x": 3}, path="/double")
        assert status == 200 and json.loads(body)["y"] == 12
        status, _, body = call(port, b"hello", path="/echo")
        assert (status, json.loads(body)) == (200, {"echo": "hello", "route": "echo"})
        assert call(port, {"x": 3})[0] == 404  # /predict is not one of them


def test_pipelined_requests_are_answered_in_order():
    with service() as (port, _):
        request = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        bodies = [json.dumps({"x": x, "sleep": 0.05 * (3 - x)}).encode() for x in range(3)]
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(b"".join(request % (len(b), b) for b in bodies))
            received = b""
            while received.count(b"HTTP/1.1 200") < 3 or not received.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
        answers = [
            json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in received.split(b"HTTP/1.1 ")[1:]
        ]
        assert [a["y"] for a in answers] == [0, 4, 8]


def test_a_request_has_an_id_that_is_answered_logged_and_seen_by_the_handler(tmp_path):
    log = tmp_path / "access.log"
    with service(ACCESS_LOG=str(log)) as (port, _):
        given = {"X-Request-ID": "client-7"}
        status, headers, body = call(port, {"x": "request id"}, headers=given)
        assert (status, headers["x-request-id"]) == (200, "client-7")
        assert json.loads(body) == {"request_id": "client-7"}  # task.request_id
        made = set()
        # none, or one that would need escaping in JSON or a log line, or too long
        for sent in (None, "has space", 'a"b', "back\\slash", "x" * 201, "caf\xe9"):
            sent_headers = {} if sent is None else {"X-Request-ID": sent}
            status, headers, body = call(port, {"x": "request id"}, headers=sent_headers)
            request_id = headers["x-request-id"]
            assert uuid.UUID(request_id).version == 4, sent
            assert json.loads(body) == {"request_id": request_id}, "the workers see the one made"
            made.add(request_id)
        assert len(made) == 6
        # error bodies name it: the front's own, a request task_from_request
        # refused, a handler that raised
        for n, (path, method, sent_body, expected) in enumerate(
            [
                ("/nowhere", "GET", None, 404),
                ("/predict", "GET", None, 400),
                ("/predict", "POST", {"x": "boom"}, 500),
            ]
        ):
            request_id = f"error-{n}"
            status, headers, body = call(
                port, sent_body, path=path, method=method, headers={"X-Request-ID": request_id}
            )
            assert (status, headers["x-request-id"]) == (expected, request_id)
            error = json.loads(body)
            assert error["request_id"] == request_id and error["error"], error

        def lines() -> list[str]:
            return log.read_text().splitlines() if log.exists() else []

        eventually(lambda: len(lines()) == 10, what=lambda: lines())
    ids = [line.rsplit(" ", 1)[-1] for line in lines()]
    assert ids == ["client-7", *sorted(made, key=ids.index), "error-0", "error-1", "error-2"]


def test_the_access_log_has_a_line_per_answer_written_by_rust(tmp_path):
    log = tmp_path / "access.log"
    with service(ACCESS_LOG=str(log)) as (port, _):
        assert call(port, {"x": 5})[0] == 200
        assert call(port, path="/nowhere?a=1", method="GET")[0] == 404
        assert call(port, {"x": "teapot"})[0] == 418

        def lines() -> list[str]:
            return log.read_text().splitlines() if log.exists() else []

        eventually(lambda: len(lines()) == 3, what=lambda: lines())
    fields = [line.split(" ") for line in lines()]
    assert [f[0] for f in fields] == ["127.0.0.1"] * 3
    assert [(f[5], f[6], f[8]) for f in fields] == [
        ('"POST', "/predict", "200"),
        ('"GET', "/nowhere?a=1", "404"),
        ('"POST', "/predict", "418"),
    ]
    assert fields[2][9] == str(len(b"short and stout"))
    assert all(float(f[10]) >= 0 for f in fields)
