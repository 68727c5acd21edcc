"""Streaming routes of aqueduct.http: parts written as chunks as they come
(Server-Sent Events by default), errors after the first part, a client
that leaves cancelling its task. Real server, real sockets, bounded waits."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from generators import noted
from support import WAIT, eventually
from test_http import call, service

SERVICE = Path(__file__).parent / "streamed_service.py"


#: The connections a test opened, closed after it.
OPENED: list[http.client.HTTPConnection] = []


@pytest.fixture(autouse=True)
def _close_connections() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def open_stream(port: int, path: str, body: dict) -> http.client.HTTPResponse:
    """The response of a streaming request (``leave`` closes its connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    OPENED.append(conn)
    conn.request("POST", path, body=json.dumps(body).encode())
    response = conn.getresponse()
    response.leave = lambda: (response.close(), conn.close())  # type: ignore[attr-defined]
    return response


def events(response: http.client.HTTPResponse, limit: int | None = None) -> list[str]:
    """The Server-Sent Events read (each as its lines, joined), at most ``limit``."""
    out, lines = [], []
    while limit is None or len(out) < limit:
        raw = response.readline()
        if not raw:
            break
        text = raw.decode().rstrip("\n")
        if text:
            lines.append(text)
        elif lines:
            out.append("\n".join(lines))
            lines = []
    return out


def in_threads(run: Callable[[int], None], count: int) -> None:
    """``run(i)`` for i in 0..count, each in a thread of its own, joined."""
    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)


def test_a_route_streams_server_sent_events_then_the_final_one() -> None:
    with service(SERVICE) as (port, _proc):
        response = open_stream(port, "/generate", {"name": "a", "length": 5})
        assert response.status == 200
        assert response.getheader("content-type") == "text/event-stream"
        got = events(response)
        assert got == [f"data: a:{i}" for i in range(5)] + ['data: {"text": "a done"}']


def test_a_route_with_its_own_chunks_and_concurrent_streams() -> None:
    with service(SERVICE) as (port, _proc):
        bodies: dict[int, bytes] = {}

        def run(i: int) -> None:
            response = open_stream(port, "/lines", {"name": f"s{i}", "length": 10 + i})
            bodies[i] = response.read()

        in_threads(run, 6)
        for i in range(6):
            assert bodies[i] == "".join(f"s{i}:{j}\n" for j in range(10 + i)).encode()


def test_an_error_after_some_parts_ends_the_stream_with_an_error_event() -> None:
    with service(SERVICE) as (port, _proc):
        got = events(open_stream(port, "/generate", {"name": "e", "length": -1}))
        assert got[:2] == ["data: e:0", "data: e:1"]
        kind, data = got[2].split("\n")
        assert kind == "event: error"
        error = json.loads(data.removeprefix("data: "))
        assert error["type"] == "ValueError" and "broke after 2 parts" in error["error"]
        status, _headers, body = call(port, b"{}", path="/generate")  # before any part
        assert status == 400, body


def test_a_client_that_leaves_cancels_its_task(tmp_path) -> None:
    log = str(tmp_path / "log")
    with service(SERVICE) as (port, _proc):
        leaver = open_stream(port, "/generate", {"name": "leaver", "length": 100_000, "log": log})
        assert events(leaver, limit=3) == [f"data: leaver:{i}" for i in range(3)]
        leaver.leave()  # type: ignore[attr-defined]
        stopped = eventually(lambda: [x for x in noted(log) if x.startswith("stopped leaver")])
        assert int(stopped[0].split()[-1]) < 100_000
        _status, _headers, page = call(port, method="GET", path="/metrics")
        assert 'aqueduct_tasks_total{flow="flow",outcome="cancelled"} 1' in page.decode()


def test_a_client_that_leaves_a_continuous_batch_and_the_rest_goes_on(tmp_path) -> None:
    log = str(tmp_path / "log")
    with service(SERVICE, CONTINUOUS="1") as (port, _proc):
        leaver = open_stream(port, "/generate", {"name": "leaver", "length": 100_000, "log": log})
        assert len(events(leaver, limit=3)) == 3
        stayer = open_stream(port, "/generate", {"name": "stayer", "length": 40, "log": log})
        leaver.leave()  # type: ignore[attr-defined]
        got = events(stayer)
        assert [e.split("/")[0] for e in got[:2]] == ["data: stayer:1", "data: stayer:2"]
        assert len(got) == 41
        lines = noted(log)
        last = lines.index("emitted stayer 40")
        assert not any(x.startswith("emitted leaver") for x in lines[last:]), lines[last - 3 :]


def test_continuous_batching_streams_over_http(tmp_path) -> None:
    with service(SERVICE, CONTINUOUS="1") as (port, _proc):
        bodies: dict[int, list[str]] = {}

        def run(i: int) -> None:
            bodies[i] = events(open_stream(port, "/generate", {"name": f"c{i}", "length": 3 + i}))

        in_threads(run, 8)
        for i in range(8):
            parts = [e.removeprefix("data: ").split("/")[0] for e in bodies[i][:-1]]
            assert parts == [f"c{i}:{j}" for j in range(1, 4 + i)]
            assert bodies[i][-1].startswith('data: {"text": "c')


def test_a_stream_outlives_the_header_timeout() -> None:
    # the header timeout bounds reading a request's head, not its answer
    with service(SERVICE, HEADER_TIMEOUT="0.2") as (port, _proc):
        got = events(open_stream(port, "/generate", {"name": "long", "length": 60}))
        assert len(got) == 61  # 60 parts 10 ms apart, then the final event


def test_big_parts_stream_from_the_workers_arena_and_its_blocks_are_freed() -> None:
    import numpy as np

    megabyte = 1 << 20
    with service(SERVICE, BLOBS="1", SHM_SIZE=str(64 << 20)) as (port, _proc):
        # 14 MiB per stream, 12 streams: more than a 64 MiB arena holds unless each
        # part's block is freed once written; the last part of each (2 MiB)
        # is more than the result ring takes inline
        for n in range(12):
            response = open_stream(port, "/blobs", {"name": f"b{n}", "length": 12})
            assert response.status == 200
            body = response.read()
            assert len(body) == 12 * megabyte + (1 << 21), n
            for i in range(12):
                part = body[i * megabyte : (i + 1) * megabyte]
                assert part == bytes([i]) * megabyte, (n, i)
            last = np.frombuffer(body[12 * megabyte :], dtype=np.int64)
            assert np.array_equal(last, np.arange(1 << 18, dtype=np.int64)), n
