"""aqueduct.http through a rolling deployment: ``/live`` and ``/ready``, the
drain after SIGTERM, a second signal, open streams at stop, and two
generations of a service handing one port over with ``SO_REUSEPORT``
under load, with no request failed. Every wait is bounded."""

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
from collections import Counter
from pathlib import Path

import pytest
from support import WAIT, children_of, eventually
from test_http import call, service

STREAMED = Path(__file__).parent / "streamed_service.py"


def test_live_and_ready_need_no_key_and_ready_turns_503_at_sigterm_while_requests_are_served():
    keyed = {"X-API-Key": "k1"}
    with service(DRAIN_DELAY="2", AQUEDUCT_API_KEYS="k1") as (port, proc):
        assert call(port, path="/live", method="GET")[:3:2] == (200, b'{"status": "live"}')
        assert call(port, path="/ready", method="GET")[:3:2] == (200, b'{"status": "ready"}')
        status, headers, _ = call(port, {"x": 1}, headers=keyed)
        assert status == 200 and headers.get("connection") != "close"
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        eventually(lambda: call(port, path="/ready", method="GET")[0] == 503, within=1.0)
        status, _, body = call(port, path="/ready", method="GET")
        error = json.loads(body)
        assert error.pop("request_id")
        assert error == {"error": "the server is draining", "type": "NotReady"}
        assert time.monotonic() - sent < 1.0, "not ready at once"
        # still served while draining, and each answer closes its connection
        status, headers, body = call(port, {"x": 2}, headers=keyed)
        assert (status, headers["connection"]) == (200, "close"), body
        assert call(port, path="/live", method="GET")[0] == 200
        assert proc.wait(timeout=WAIT) == 0
        assert time.monotonic() - sent >= 2.0, "served for the drain delay"
        with pytest.raises(OSError):
            call(port, {"x": 3}, headers=keyed)


def test_ready_is_503_while_a_killed_worker_is_respawned_then_200_again():
    with service() as (port, proc):
        assert call(port, path="/ready", method="GET")[0] == 200
        os.kill(min(children_of(proc.pid)), signal.SIGKILL)
        reasons = []
        until = time.monotonic() + WAIT
        while time.monotonic() < until:
            status, _, body = call(port, path="/ready", method="GET")
            if status == 503:
                reasons.append(json.loads(body)["error"])
            elif reasons:
                break  # ready again
            time.sleep(0.01)
        assert reasons and "workers of step" in reasons[0], reasons
        assert call(port, path="/ready", method="GET")[0] == 200
        assert call(port, {"x": 1})[0] == 200


def test_a_second_signal_stops_at_once():
    with service(DRAIN_DELAY="60") as (port, proc):
        assert call(port, {"x": 1})[0] == 200
        proc.send_signal(signal.SIGTERM)
        eventually(lambda: call(port, path="/ready", method="GET")[0] == 503, within=WAIT)
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        assert proc.wait(timeout=WAIT) == 0
        assert time.monotonic() - started < 3.0


def test_at_stop_an_open_stream_ends_with_an_error_event_after_the_graceful_timeout():
    proc = subprocess.Popen(
        [sys.executable, str(STREAMED)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "GRACEFUL_TIMEOUT": "1", "TIMEOUT": "60"},
    )
    try:
        port = int(proc.stdout.readline().split()[-1])  # type: ignore[union-attr]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        conn.request("POST", "/generate", body=json.dumps({"name": "s", "length": 5000}))
        response = conn.getresponse()
        assert response.status == 200
        assert response.read1(64).startswith(b"data: ")  # the stream has begun
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        rest = response.read().decode()
        assert time.monotonic() - started < 1 + 2
        assert rest.endswith("\n\n") and "event: error\n" in rest, rest[-300:]
        assert json.loads(rest.rsplit("data: ", 1)[1])["type"] == "FlowError"
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
        proc.stdout.close()  # type: ignore[union-attr]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Clients:
    """``n`` clients, each sending a request after the other on a keep-alive
    connection (reconnecting when an answer closes it) until stopped."""

    def __init__(self, port: int, n: int) -> None:
        self.port = port
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n)]
        for thread in self._threads:
            thread.start()

    def _run(self, i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        while not self._stop.is_set():
            try:
                status, _, body = call(self.port, {"x": i}, conn=conn)
                generation = json.loads(body).get("generation") if status == 200 else None
                outcome = f"{status} {generation}"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"failed: {exc!r}"
                conn.close()
            with self._lock:
                if outcome.startswith("200 "):
                    self.answers[outcome.split()[1]] += 1
                else:
                    self.failures.append(outcome)
        conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT)


def test_two_generations_hand_the_port_over_under_load_with_no_request_failed():
    port = _free_port()
    env = {"PORT": str(port), "REUSE_PORT": "1", "DRAIN_DELAY": "1.5", "BATCH": "8"}
    with service(**env, GENERATION="old") as (_, old):
        clients = _Clients(port, 64)
        try:
            eventually(lambda: clients.answers["old"] > 200, within=WAIT, what="load on the old")
            with service(**env, GENERATION="new") as (_, new):
                # the new one listens beside the old (its line says it is ready)
                old.send_signal(signal.SIGTERM)
                assert old.wait(timeout=WAIT) == 0
                served_by_old = clients.answers["old"]
                eventually(lambda: clients.answers["new"] > 500, within=WAIT, what="the new serves")
                assert clients.answers["old"] == served_by_old
                clients.stop()
                assert new.poll() is None
        finally:
            clients.stop()
    assert clients.failures == [], Counter(clients.failures).most_common(5)
    assert set(clients.answers) == {"old", "new"}, clients.answers
