"""aqueduct.http against hostile clients, over loopback with raw sockets:
slow and half-sent heads by the thousand, slow bodies, oversized heads,
smuggling shapes, garbage, connection floods beyond the cap, clients that
leave. Every wait is bounded."""

from __future__ import annotations

import http.client
import json
import os
import random
import selectors
import socket
import statistics
import threading
import time

import pytest
from support import WAIT, eventually
from test_http import call, service


def test_a_request_the_parser_refuses_gets_a_json_400():
    with service() as (port, _):
        for first in (b"", b'POST /predict HTTP/1.1\r\nContent-Length: 8\r\n\r\n{"x": 1}'):
            with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
                sock.sendall(first + b"NOT HTTP AT ALL\r\n\r\n")
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
            last = received.split(b"HTTP/1.1 ")[-1]
            assert last.startswith(b"400"), received
            assert json.loads(last.split(b"\r\n\r\n", 1)[1])["type"] == "BadRequest"
        assert call(port, {"x": 1})[0] == 200
        # a handler's own bodiless 4xx is left alone
        status, _, body = call(port, {"x": "empty"})
        assert (status, body) == (404, b"")


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (what it sent first is read)."""
    sock.settimeout(0.05)
    try:
        while chunk := sock.recv(65536):
            del chunk
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True


CHUNKED_BODY = b'8\r\n{"x": 1}\r\n0\r\n\r\n'  # valid: hyper would read it


@pytest.mark.parametrize(
    "head",
    [
        b"Content-Length: 8\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 8\r\n",
        b"Content-Length: 8\r\nTransfer-Encoding: gzip, chunked\r\n",
        b"Content-Length: 8\r\nTransfer-Encoding:\r\n chunked\r\n",  # obsolete line folding
        b"Content-Length: 8\nTransfer-Encoding: chunked\n",  # bare LF line endings
        b"Content-Length: 8\r\nContent-Length: 9\r\n",
    ],
    ids=["cl-te", "te-cl", "gzip-chunked", "obs-fold", "bare-lf", "two-lengths"],
)
def test_smuggling_shapes_get_400_and_nothing_after_them_is_served(head):
    smuggled = b"POST /predict HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n" + CHUNKED_BODY
    after = b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{"x": 2}'
    with service() as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(smuggled + after)  # a second request behind it, on the same connection
            received = b""
            while chunk := sock.recv(65536):  # until the server closes it
                received += chunk
        assert received.startswith(b"HTTP/1.1 400"), received
        assert received.count(b"HTTP/1.1 ") == 1, "nothing after the refused request is served"
        assert json.loads(received.split(b"\r\n\r\n", 1)[1])["type"] == "BadRequest"
        assert call(port, {"x": 1})[0] == 200


def test_pipelined_requests_with_sized_and_chunked_bodies_are_all_served():
    """The framing that refuses smuggling follows honest bodies to the next head."""
    sized = b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{"x": 1}'
    chunked = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b'3;ext=1\r\n{"x\r\n5\r\n": 2}\r\n0\r\nX-Trailer: 1\r\n\r\n'
    last = sized.replace(b"Host: x", b"Host: x\r\nConnection: close").replace(b"1}", b"3}")
    with service() as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sent = sized + chunked + last
            for at in range(0, len(sent), 7):  # in pieces that cut heads and chunks
                sock.sendall(sent[at : at + 7])
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        assert received.count(b"HTTP/1.1 200") == 3, received
        for y in (4, 8, 12):  # two steps, each doubling
            assert b'"y": %d' % y in received, received


def test_half_sent_heads_are_closed_after_the_header_timeout_idle_ones_after_the_idle_timeout():
    with service(HEADER_TIMEOUT="0.5", IDLE_TIMEOUT="4") as (port, _):
        partial = [socket.create_connection(("127.0.0.1", port), timeout=WAIT) for _ in range(50)]
        for sock in partial:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        silent = socket.create_connection(("127.0.0.1", port), timeout=WAIT)  # sends nothing
        assert call(port, {"x": 2})[0] == 200  # others are served meanwhile
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        assert call(port, {"x": 3}, conn=idle)[0] == 200
        answered = time.monotonic()
        try:
            for sock in [*partial, silent]:
                eventually(lambda s=sock: _closed_by_server(s), what="the server closed it")
            assert time.monotonic() - answered < 3.0
            assert not _closed_by_server(idle.sock), "idle for less than its timeout"
            assert call(port, {"x": 4}, conn=idle)[0] == 200, "and still serving"
            eventually(lambda: _closed_by_server(idle.sock), what="the idle connection closed")
        finally:
            idle.close()
            silent.close()
            for sock in partial:
                sock.close()


def test_a_client_that_leaves_before_its_answer_cancels_the_task(tmp_path):
    busy, left = tmp_path / "busy", tmp_path / "left"

    def page() -> str:
        return call(port, method="GET", path="/metrics")[2].decode()

    with service() as (port, _):
        # the only first-step worker is busy with another request meanwhile
        first = threading.Thread(
            target=call, args=(port, {"x": 1, "sleep": 3.0, "reached": str(busy)})
        )
        first.start()
        eventually(busy.exists, what="the worker busy")
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            body = json.dumps({"x": 2, "reached": str(left)}).encode()
            head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            sock.sendall(head + body)
            queued = 'aqueduct_queue_size{flow="flow",step="step1_Double"} 1.0'
            eventually(lambda: queued in page(), what=page)  # its task waits in the queue
        # the client went: its task is cancelled, and the worker skips it
        eventually(lambda: 'outcome="cancelled"} 1.0' in page(), what=page)
        first.join(WAIT)
        dropped = 'step="step1_Double",reason="cancelled"} 1.0'
        eventually(lambda: dropped in page(), what=page)
        assert not left.exists()


def test_connections_beyond_the_cap_wait_until_one_closes():
    with service(MAX_CONNECTIONS="2") as (port, _):
        held = [http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT) for _ in range(2)]
        for conn in held:
            assert call(port, {"x": 1}, conn=conn)[0] == 200  # both open, kept alive
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as third:
            third.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{"x": 4}')
            third.settimeout(0.5)
            with pytest.raises(TimeoutError):
                third.recv(1)  # waits in the backlog: not accepted yet
            held.pop().close()
            third.settimeout(WAIT)
            assert third.recv(65536).startswith(b"HTTP/1.1 200")  # accepted once one closed
        held.pop().close()


def test_a_chunked_body_is_read_and_counts_against_the_limit():
    with service(BODY_LIMIT="64") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            chunks = b'4\r\n{"x"\r\n4\r\n: 21\r\n1\r\n}\r\n0\r\n\r\n'
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
            )
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200") and b'"y": 84' in answer, answer
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            big = b"40\r\n" + b" " * 64 + b"\r\n" + b'8\r\n{"x": 1}\r\n0\r\n\r\n'
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + big
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 413")


def test_a_body_that_does_not_come_in_time_gets_408():
    with service(BODY_TIMEOUT="0.5") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as slow:
            slow.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"x": ')
            assert call(port, {"x": 1})[0] == 200  # others are served meanwhile
            received = b""
            while chunk := slow.recv(65536):  # until the server closes it
                received += chunk
        assert received.startswith(b"HTTP/1.1 408"), received
        assert json.loads(received.split(b"\r\n\r\n", 1)[1])["type"] == "RequestTimeout"


def _exchange(port: int, sent: bytes, *, half_close: bool = False) -> bytes:
    """Sends ``sent`` on a new connection (and, with ``half_close``, says it
    will send nothing more), then reads what the server sends until it
    closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        try:
            sock.sendall(sent)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except ConnectionError:
            pass  # the server answered and closed before all of it was in
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _latencies(port: int, n: int) -> list[float]:
    """Seconds each of ``n`` requests took, one after another, each on a
    connection of its own (as a new client's)."""
    out = []
    for x in range(n):
        start = time.perf_counter()
        status, _, _ = call(port, {"x": x})
        out.append(time.perf_counter() - start)
        assert status == 200
    return out


def _all_closed_by_server(socks: list[socket.socket], within: float) -> float:
    """Waits until the server closed every one of ``socks``; returns when
    the last one closed (monotonic seconds)."""
    deadline = time.monotonic() + within
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        left = len(socks)
        while left:
            assert time.monotonic() < deadline, f"{left} of {len(socks)} still open"
            for key, _ in selector.select(timeout=0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if sock.recv(65536):
                        continue  # what it sent before closing
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionError:
                    pass
                selector.unregister(sock)
                left -= 1
    return time.monotonic()


def test_a_thousand_slowloris_clients_neither_slow_others_nor_stay():
    with service(HEADER_TIMEOUT="3") as (port, proc):
        before = statistics.median(_latencies(port, 30))
        fds = _open_fds(proc.pid)
        attackers = []
        try:
            for _ in range(1200):
                sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
                attackers.append(sock)
            started = time.monotonic()
            # (a few of the baseline's connections may still be closing)
            eventually(lambda: _open_fds(proc.pid) >= fds + 1190, what="all 1,200 accepted")
            during = _latencies(port, 50)
            for sock in attackers:  # a header line each: trickling does not buy time
                sock.sendall(b"X-Slow: 1\r\n")
            during += _latencies(port, 50)
            # a new client is answered as fast as before, give or take the machine
            assert statistics.median(during) < 3 * before + 0.005, (before, during)
            assert max(during) < 0.5, max(during)
            closed = _all_closed_by_server(attackers, within=WAIT)
            assert closed - started < 3 + 2.5, "closed at the header timeout of their first byte"
        finally:
            for sock in attackers:
                sock.close()
        eventually(lambda: _open_fds(proc.pid) <= fds + 2, what="the server's fds back")
        assert call(port, {"x": 1})[0] == 200


def test_a_flood_beyond_the_connection_cap_never_holds_more_than_the_cap():
    with service(MAX_CONNECTIONS="100", HEADER_TIMEOUT="1") as (port, proc):
        fds = _open_fds(proc.pid)
        flood = []
        try:
            for _ in range(400):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))  # silent: waits to be accepted
                flood.append(sock)
            peak = 0
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                peak = max(peak, _open_fds(proc.pid) - fds)
                time.sleep(0.01)
            assert 0 < peak <= 100 + 2, peak  # the cap, whatever waits in the backlog
            # the silent ones are cut at the header timeout, a hundred at a time,
            # and a real client gets in behind them
            status, _, _ = call(port, {"x": 2})
            assert status == 200
        finally:
            for sock in flood:
                sock.close()
        eventually(lambda: _open_fds(proc.pid) <= fds + 2, what="the server's fds back")


def test_an_oversized_head_gets_a_json_431_and_others_are_served():
    with service() as (port, _):
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
        received = _exchange(port, head)
        assert received.startswith(b"HTTP/1.1 431"), received[:200]
        assert json.loads(received.split(b"\r\n\r\n", 1)[1])["type"] == "BadRequest"
        assert call(port, {"x": 1})[0] == 200


def test_a_body_trickled_a_byte_at_a_time_still_gets_408_at_the_body_timeout():
    with service(BODY_TIMEOUT="1") as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as slow:
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            start = time.monotonic()
            received = b""
            slow.settimeout(0.1)
            while time.monotonic() - start < WAIT:
                try:
                    slow.sendall(b" ")
                    chunk = slow.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionError:
                    break
                if not chunk:
                    break
                received += chunk
        assert received.startswith(b"HTTP/1.1 408"), received
        assert time.monotonic() - start < 1 + 2


def test_garbage_and_damaged_requests_get_4xx_or_a_close_and_the_server_serves_on():
    rng = random.Random(7)
    valid = b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{"x": 1}'
    with service(HEADER_TIMEOUT="1") as (port, proc):
        for attempt in range(300):
            if attempt % 3 == 0:
                sent = rng.randbytes(rng.randrange(1, 400))
            else:  # a valid request with a few bytes changed, cut or doubled
                sent = bytearray(valid)
                for _ in range(rng.randrange(1, 4)):
                    sent[rng.randrange(len(sent))] = rng.randrange(256)
                sent = bytes(sent[: rng.randrange(1, len(sent) + 1)]) * rng.choice([1, 2])
            received = _exchange(port, sent, half_close=True)
            statuses = [int(part[:3]) for part in received.split(b"HTTP/1.1 ")[1:]]
            # each answer is a status a client can read (a 2xx for what still parsed)
            assert all(100 <= s < 600 for s in statuses), (sent, received)
        assert proc.poll() is None
        assert call(port, {"x": 3})[0] == 200


def test_api_keys_are_needed_everywhere_but_health_and_come_in_either_header():
    with service(AQUEDUCT_API_KEYS="k1-secret, k2-secret") as (port, _):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "k1-secre"}):
            status, got, body = call(port, {"x": 1}, headers=headers)
            assert status == 401, (headers, body)
            assert got["www-authenticate"] == "Bearer"
            assert json.loads(body)["type"] == "Unauthorized"
        assert call(port, {"x": 1}, headers={"Authorization": "Bearer k1-secret"})[0] == 200
        assert call(port, {"x": 1}, headers={"X-API-Key": "k2-secret"})[0] == 200
        assert call(port, path="/health", method="GET")[0] == 200
        assert call(port, path="/metrics", method="GET")[0] == 401
        metrics = call(port, path="/metrics", method="GET", headers={"X-API-Key": "k1-secret"})
        assert metrics[0] == 200
        assert call(port, path="/nowhere", method="GET")[0] == 401, "no route map for strangers"
    with service(AQUEDUCT_API_KEYS="k1-secret", OPEN_METRICS="1") as (port, _):
        assert call(port, path="/metrics", method="GET")[0] == 200
        assert call(port, {"x": 1})[0] == 401


def test_a_client_that_reads_none_of_its_answer_is_cut_at_the_write_timeout():
    with service(WRITE_TIMEOUT="1", BIG_ANSWER="2000000") as (port, _):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(WAIT)
        with sock:
            sock.connect(("127.0.0.1", port))
            body = b'{"x": "big answer"}'
            head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            sock.sendall((head + body) * 6)  # 12 MB of answers: more than the kernel buffers
            time.sleep(3)  # reads nothing for longer than the write timeout
            assert call(port, {"x": 1})[0] == 200, "others are served meanwhile"
            received = 0
            try:
                while chunk := sock.recv(1 << 20):
                    received += len(chunk)
            except ConnectionResetError:
                pass
        assert 0 < received < 6 * 2_000_000, received  # cut short, not waited on forever
