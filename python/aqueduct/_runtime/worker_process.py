"""One worker slot as the parent sees it: its process, control channel,
state (starting, ready, retiring, dead) and history of deaths."""

from __future__ import annotations

import collections
import logging
import signal
import time
from multiprocessing.connection import Connection, wait

from .._ipc.protocol import WorkerSpec
from ..exceptions import FlowStartTimeoutError, WorkerStartError
from ..logger import log
from .launch import WorkerHandle, definition

__all__ = ["RESPAWN_BACKOFF_MAX", "RESPAWN_WINDOW", "WorkerProcess", "states", "wait_ready"]

#: A worker that dies this many times within RESPAWN_WINDOW seconds is not
#: respawned again.
RESPAWN_LIMIT = 5
RESPAWN_WINDOW = 30.0
#: Delay before the n-th respawn within the window: BASE * 2**(n-1), capped.
RESPAWN_BACKOFF_BASE = 0.1
RESPAWN_BACKOFF_MAX = 5.0


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
        #: Started while the flow serves (a replacement, or an elastic step
        #: growing) and not ready yet: a death now is a failed start, not
        #: one to respawn from.
        self.trial = False
        #: Told to take no more tasks and exit: its exit is expected.
        self.retiring = False
        #: When the monitor saw it ready (0: at the flow's start).
        self.ready_at = 0.0

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

    def note_death(self, now: float) -> float | None:
        """It died (unexpectedly) at ``now``: the delay before its respawn,
        or None when it died too often lately to be respawned again."""
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > RESPAWN_WINDOW:
            self.deaths.popleft()
        if len(self.deaths) >= RESPAWN_LIMIT:
            self.given_up = True
            return None
        return float(min(RESPAWN_BACKOFF_BASE * 2 ** (len(self.deaths) - 1), RESPAWN_BACKOFF_MAX))

    @property
    def live(self) -> bool:
        """Counts among its step's workers (starting or serving)."""
        return not self.retiring and not self.given_up

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


def states(workers: list[WorkerProcess]) -> tuple[int, int, int]:
    """How many of ``workers`` serve, start and retire."""
    running = starting = retiring = 0
    for w in workers:
        if w.retiring:
            retiring += 1
        elif w.ready and not w.dead:
            running += 1
        elif not w.given_up:
            starting += 1
    return running, starting, retiring


def wait_ready(workers: list[WorkerProcess], deadline: float | None) -> None:
    """Until each of ``workers`` (the monitor not running yet) finished
    ``on_start``; raises if one failed, died, or ``deadline`` passed."""
    while not all(w.ready for w in workers):
        for w in workers:
            if w.failure is not None:
                raise WorkerStartError(f"a worker of {w.step_name} failed to start:\n{w.failure}")
            if not w.ready and w.conn is None:
                w.process.join(1.0)
                raise WorkerStartError(
                    f"a worker of {w.step_name} exited while starting ({w.exit_description()})"
                )
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            waiting = sorted({w.step_name for w in workers if not w.ready})
            raise FlowStartTimeoutError(
                f"start timeout expired before on_start finished in {', '.join(waiting)}"
            )
        conns = {w.conn: w for w in workers if w.conn is not None}
        for conn in wait(list(conns), timeout=remaining):
            conns[conn].handle_control()  # type: ignore[index]
