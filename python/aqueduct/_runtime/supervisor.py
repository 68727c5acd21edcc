"""Worker processes as the parent sees them: starting them, waiting for their
``on_start``, forwarding their log records, noticing when one dies, and
respawning it — with a backoff, and giving up on a worker that keeps dying."""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Protocol

from .. import _core
from .._ipc.protocol import EXIT_CORRUPT_SEGMENT, WorkerSpec
from ..exceptions import FlowStartTimeoutError, WorkerStartError
from ..logger import log
from .launch import WorkerHandle, definition, launch

#: A worker that dies this many times within RESPAWN_WINDOW seconds is not
#: respawned again.
RESPAWN_LIMIT = 5
RESPAWN_WINDOW = 30.0
#: Delay before the n-th respawn within the window: BASE * 2**(n-1), capped.
RESPAWN_BACKOFF_BASE = 0.1
RESPAWN_BACKOFF_MAX = 5.0
#: How often the monitor looks around when nothing happens.
MONITOR_TICK = 0.5


class WorkerProcess:
    """One worker slot: its current process, control pipe and history."""

    def __init__(
        self, spec: WorkerSpec, number: int, process: WorkerHandle, conn: Connection
    ) -> None:
        self.spec = spec
        self.number = number
        self.process = process
        self.conn: Connection | None = conn
        self.ready = False
        self.failure: str | None = None
        self.dead = False
        self.given_up = False
        self.respawn_at: float | None = None
        self.deaths: collections.deque[float] = collections.deque()

    @property
    def step_name(self) -> str:
        return self.spec.step_name

    @property
    def step_index(self) -> int:
        return self.spec.step_index

    def handle_control(self) -> None:
        """Reads one control message: a log record, readiness, a start
        failure, or a request for a definition of ``__main__``."""
        assert self.conn is not None
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            self.conn.close()
            self.conn = None
            return
        match message:
            case ("log", fields):
                record = logging.makeLogRecord(fields)
                if log.isEnabledFor(record.levelno):
                    log.handle(record)
            case ("ready", _pid):
                self.ready = True
            case ("failed", text):
                self.failure = text
            case ("need", name):
                answer = definition(name)
                if isinstance(answer, bytes):
                    log.debug("Sent __main__.%s to a worker of %s", name, self.step_name)
                try:
                    self.conn.send(("definition", name, answer))
                except OSError:
                    pass  # the worker died meanwhile; its sentinel tells

    def drain_control(self) -> None:
        """Handles whatever the process sent before it died."""
        while self.conn is not None and self.conn.poll():
            self.handle_control()

    def exit_description(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "unknown exit"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


class Answers(Protocol):
    """What a flow does when its workers die (``Recovery``)."""

    def worker_died(self, worker: WorkerProcess, how: str, keys: list[int]) -> None: ...
    def step_down(self, step_name: str, why: str) -> None: ...
    def segments_corrupt(self, step_name: str) -> None: ...
    def unwedge_queues(self) -> None: ...


_LIVE: weakref.WeakSet[Supervisor] = weakref.WeakSet()


@atexit.register
def _interpreter_exit() -> None:
    """At interpreter exit multiprocessing terminates daemonic workers: that
    is neither a death to report nor one to respawn from."""
    for supervisor in list(_LIVE):
        supervisor.stop_respawning()


class Supervisor:
    """Starts and watches the worker processes of one flow."""

    def __init__(
        self,
        start_method: str,
        control: _core.Control,
        answers: Answers,
    ) -> None:
        self._start_method = start_method
        self._control = control
        self._on_death: Callable[..., None] = answers.worker_died
        self._on_step_down: Callable[..., None] = answers.step_down
        self._on_corrupt: Callable[..., None] = answers.segments_corrupt
        self._on_tick: Callable[[], None] = answers.unwedge_queues
        self.workers: list[WorkerProcess] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()  # ends the monitor's wait at once
        self._respawning = True
        _LIVE.add(self)

    # -- starting ----------------------------------------------------------------

    def start_all(
        self, specs: list[WorkerSpec], on_start_waits: list[float], deadline: float | None
    ) -> None:
        """Starts a worker per spec (``on_start_waits[i]`` seconds pass after
        the last one of step ``i``) and waits until all are ready."""
        numbers: dict[int, int] = {}  # workers of each step so far
        for spec in specs:
            number = numbers[spec.step_index] = numbers.get(spec.step_index, -1) + 1
            self.spawn(spec, number)
            if on_start_waits[spec.step_index] and number == spec.nprocs - 1:
                time.sleep(on_start_waits[spec.step_index])
        timeout = None if deadline is None else round(deadline - time.monotonic(), 3)
        log.info("Waiting for all workers to start up (timeout: %s s)", timeout)
        self.wait_ready(deadline)

    def spawn(self, spec: WorkerSpec, number: int) -> WorkerProcess:
        process, conn = launch(self._start_method, spec, _process_name(spec, number))
        worker = WorkerProcess(spec, number, process, conn)
        self.workers.append(worker)
        return worker

    def _launch(self, worker: WorkerProcess) -> None:
        worker.process, worker.conn = launch(
            self._start_method, worker.spec, _process_name(worker.spec, worker.number)
        )
        worker.ready, worker.failure, worker.dead = False, None, False

    def wait_ready(self, deadline: float | None) -> None:
        """Until every worker finished ``on_start``; raises if one failed,
        died, or ``deadline`` passed."""
        while not all(w.ready for w in self.workers):
            for w in self.workers:
                if w.failure is not None:
                    raise WorkerStartError(
                        f"a worker of {w.step_name} failed to start:\n{w.failure}"
                    )
                if not w.ready and w.conn is None:
                    w.process.join(1.0)
                    raise WorkerStartError(
                        f"a worker of {w.step_name} exited while starting ({w.exit_description()})"
                    )
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                waiting = sorted({w.step_name for w in self.workers if not w.ready})
                raise FlowStartTimeoutError(
                    f"start timeout expired before on_start finished in {', '.join(waiting)}"
                )
            conns = {w.conn: w for w in self.workers if w.conn is not None}
            for conn in wait(list(conns), timeout=remaining):
                conns[conn].handle_control()  # type: ignore[index]

    # -- watching ----------------------------------------------------------------

    def start_monitor(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._monitor, name="aqueduct-monitor", daemon=True)
        self._thread.start()

    def _monitor(self) -> None:
        last_tick = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_tick >= MONITOR_TICK:
                last_tick = now
                self._on_tick()
            for w in self.workers:
                if w.respawn_at is not None and now >= w.respawn_at:
                    self._respawn(w)
            by_conn = {w.conn: w for w in self.workers if w.conn is not None}
            by_sentinel = {w.process.sentinel: w for w in self.workers if not w.dead}
            pending = [w.respawn_at for w in self.workers if w.respawn_at is not None]
            tick = min([MONITOR_TICK, *(max(0.0, t - now) for t in pending)])
            if not by_conn and not by_sentinel and not pending:
                return
            for ready in wait([*by_conn, *by_sentinel, self._wake_r], timeout=tick):
                if self._stop.is_set():
                    return
                if ready in by_conn:
                    by_conn[ready].handle_control()
                elif ready in by_sentinel:
                    self._died(by_sentinel[ready])

    def _died(self, w: WorkerProcess) -> None:
        w.dead = True
        w.process.join(1.0)
        w.drain_control()
        if not self._respawning:
            return  # the flow is stopping: workers exit on purpose
        if w.process.exitcode == EXIT_CORRUPT_SEGMENT:
            # it found the segments corrupt: so would every respawn, and the
            # queues its tasks' errors would go through cannot be trusted —
            # the flow goes down at once, failing every caller
            w.given_up = True
            self._on_corrupt(w.step_name)
            return
        keys = self._control.claims(w.spec.slot)
        self._control.clear_claims(w.spec.slot)
        self._on_death(w, w.exit_description(), keys)
        now = time.monotonic()
        w.deaths.append(now)
        while w.deaths and now - w.deaths[0] > RESPAWN_WINDOW:
            w.deaths.popleft()
        if len(w.deaths) >= RESPAWN_LIMIT:
            w.given_up = True
            log.error(
                "A worker of %s died %d times in %.0f s; not respawning it again",
                w.step_name,
                len(w.deaths),
                RESPAWN_WINDOW,
            )
            if all(x.given_up for x in self.workers if x.step_index == w.step_index):
                self._on_step_down(w.step_name, "its workers keep dying")
            return
        delay = min(RESPAWN_BACKOFF_BASE * 2 ** (len(w.deaths) - 1), RESPAWN_BACKOFF_MAX)
        w.respawn_at = now + delay

    def _respawn(self, w: WorkerProcess) -> None:
        w.respawn_at = None
        if w.conn is not None:
            w.conn.close()
        _close(w.process)
        try:
            self._launch(w)
        except Exception:
            log.exception("Could not respawn a worker of %s", w.step_name)
            w.dead, w.respawn_at = True, time.monotonic() + RESPAWN_BACKOFF_MAX
            return
        log.warning("Respawned a worker of %s (pid %s)", w.step_name, w.process.pid)

    # -- stopping ----------------------------------------------------------------

    def sentinels_alive(self) -> list[int]:
        return [
            w.process.sentinel
            for w in self.workers
            if w.process is not None and w.process.is_alive()
        ]

    async def join(self, grace: float) -> None:
        """Lets the workers exit by themselves (their queues are closed) for
        at most ``grace`` seconds, then terminates the rest."""
        await asyncio.to_thread(self.join_blocking, grace)

    def join_blocking(self, grace: float) -> None:
        """``join`` for a thread of its own."""
        deadline = time.monotonic() + grace
        while (alive := self.sentinels_alive()) and time.monotonic() < deadline:
            wait(alive, deadline - time.monotonic())
        self.kill_all()

    def stop_respawning(self) -> None:
        """From now on exits are expected: no failing of tasks, no respawn."""
        self._respawning = False
        for w in self.workers:
            w.respawn_at = None

    def stop_monitor(self) -> None:
        self._respawning = False
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self._thread = None

    def kill_all(self) -> None:
        """Stops the monitor, terminates what is left and reaps it (bounded)."""
        self.stop_monitor()
        for w in self.workers:
            if w.process is not None and w.process.is_alive():
                w.process.terminate()
        for w in self.workers:
            if w.process is None:
                continue
            w.process.join(2.0)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2.0)
            _close(w.process)
        for w in self.workers:
            if w.conn is not None:
                w.conn.close()
                w.conn = None
        self.workers = []
        # done: it lets go of the flow's recovery (and through it of the
        # flow's segments) now, not when the thread that ran this drops it
        self._on_death = self._on_step_down = self._on_corrupt = _ignore
        self._on_tick = _ignore
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1


def _ignore(*_args: object) -> None:
    pass


def _process_name(spec: WorkerSpec, number: int) -> str:
    return f"aqueduct-{spec.step_name}-{number}"


def _close(process: WorkerHandle) -> None:
    """Releases what a reaped process object holds (its pidfd)."""
    try:
        process.close()
    except (ValueError, OSError):
        pass  # still running: kept until it is reaped
