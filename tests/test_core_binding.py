"""The native binding's promises (``aqueduct._core``, typed by its
``_core.pyi``): blocking calls release the GIL and still run Python signal
handlers; queues are anonymous shared memory; messages keep their fields;
the core's errors reach Python as the package's exceptions."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from aqueduct import _core
from aqueduct.exceptions import TaskTooLargeError
from aqueduct.testing import fault_injection_available
from support import eventually

#: Tests that drain queues by hand use the test hooks of the extension.
needs_hooks = pytest.mark.skipif(
    not fault_injection_available(), reason="a build without the fault-injection hooks"
)


class NoSlowPath:
    """A worker's Python half for tests that never need it."""

    def load(self, *args: object) -> None:
        raise AssertionError(f"unexpected load{args}")

    def encode(self, *args: object) -> None:
        raise AssertionError(f"unexpected encode{args}")

    def drop(self, messages: object) -> None:
        pass

    def retire(self, refs: object, kept: object) -> None:
        pass


def step_worker(queue: _core.Queue, batch_size: int = 1) -> _core.StepWorker:
    """A StepWorker reading ``queue``, with one client's result queue."""
    results = _core.Queue.create()
    return _core.StepWorker(
        0,
        0,
        [queue, results],
        [_core.Doorbell()],
        _core.Control.create(1),
        [bool],
        NoSlowPath(),
        batch_size,
    )


def test_a_waiting_worker_releases_the_gil():
    queue = _core.Queue.create()
    worker = step_worker(queue)
    counter = 0
    done = threading.Event()

    def count() -> None:
        nonlocal counter
        while not done.is_set():
            counter += 1

    thread = threading.Thread(target=count)
    thread.start()
    try:
        started = time.monotonic()
        assert worker.next(0.3) is False
        assert time.monotonic() - started >= 0.25
        before = counter
        eventually(lambda: counter > before, what="the other thread running")
    finally:
        done.set()
        thread.join(5)
    assert counter > 10_000  # it ran while next() waited


def test_signal_handlers_run_during_a_wait_without_deadline():
    queue = _core.Queue.create()
    worker = step_worker(queue)

    class Alarm(Exception):
        pass

    def on_alarm(signum, frame):
        raise Alarm

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        started = time.monotonic()
        with pytest.raises(Alarm):
            worker.next(None)  # would wait forever
        assert time.monotonic() - started < 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def message(key: int, payload: bytes = b"", **fields: int) -> _core.Message:
    return _core.Message(key=key, kind=_core.KIND_TASK, payload=payload, **fields)


@needs_hooks
def test_a_message_comes_out_as_it_went_in():
    queue = _core.Queue.create(2, 8, 64)
    sent = message(7, b"body", priority=1, deadline_ns=123)
    assert queue.try_push(sent) is True
    (got,) = queue.drain(4)
    assert (got.key, got.kind, got.priority, got.deadline_ns, got.payload) == (
        7,
        _core.KIND_TASK,
        1,
        123,
        b"body",
    )
    assert "key=7" in repr(got)


def consume_one_soon(queue: _core.Queue) -> threading.Thread:
    """A consumer that takes one message once a producer waits for room, and
    says it made room."""

    def consume() -> None:
        eventually(lambda: queue.sleepers()[1] > 0, what="a producer waiting for room")
        queue.drain(1)

    thread = threading.Thread(target=consume)
    thread.start()
    return thread


@needs_hooks
def test_push_waiting_waits_for_room_within_its_bound():
    queue = _core.Queue.create(1, 4, 64, 1)
    assert queue.try_push(message(1))
    started = time.monotonic()
    assert queue.push_waiting(message(2), 0.2) is False  # no room came
    assert 0.15 <= time.monotonic() - started < 2
    expired = message(3, deadline_ns=time.monotonic_ns() + 100_000_000)
    assert queue.push_waiting(expired, 60) is False  # its own deadline bounds it
    assert time.monotonic() - started < 3

    thread = consume_one_soon(queue)
    assert queue.push_waiting(message(4), 5) is True
    thread.join(5)
    assert [m.key for m in queue.drain(4)] == [4]
    queue.close()
    assert queue.push_waiting(message(5), 5) is False  # closed: dropped at once


def test_errors_map_to_public_exceptions():
    queue = _core.Queue.create(1, 8, 64)
    with pytest.raises(TaskTooLargeError, match="bytes"):
        queue.try_push(message(1, b"x" * (1 << 20)))  # more than its 8 slots hold
    with pytest.raises(ValueError):
        step_worker(queue, batch_size=0)


def test_queues_are_anonymous_memfds_not_dev_shm_files():
    before = set(os.listdir("/dev/shm"))
    queue = _core.Queue.create()
    assert os.readlink(f"/proc/self/fd/{queue.fd}").startswith("/memfd:aqueduct-queue")
    assert set(os.listdir("/dev/shm")) == before


def test_the_doorbell_is_an_eventfd_for_the_event_loop():
    bell = _core.Doorbell()
    assert bell.drain() == 0
    bell.signal()
    bell.signal()
    assert bell.drain() == 2
    assert os.readlink(f"/proc/self/fd/{bell.fd}") == "anon_inode:[eventfd]"
