"""Worker processes as the parent sees them: starting them, waiting for their
``on_start``, forwarding their log records, noticing when one dies, and
respawning it — with a backoff, and giving up on a worker that keeps dying.
While the flow serves, workers also come (``add``: a handler replacement, an
elastic step growing) and go (``retire``): every change of ``workers`` is
made under ``lock``, and ``changed`` tells whoever waits for one."""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Protocol

from .. import _core
from .._ipc.protocol import EXIT_CORRUPT_SEGMENT, WorkerSpec
from ..logger import log
from .launch import WorkerHandle, launch
from .worker_process import (
    RESPAWN_BACKOFF_MAX,
    RESPAWN_WINDOW,
    WorkerProcess,
    states,
    wait_ready,
)

#: How often the monitor looks around when nothing happens.
MONITOR_TICK = 0.5
#: How often it does with an elastic step to size.
SCALE_TICK = 0.02


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
        #: Sizes elastic steps, on every look around (see ``elastic``).
        self.on_scale: Callable[[], None] | None = None
        #: Called (from the monitor's thread) when a worker became ready,
        #: died or was respawned: what serves readiness reads it at once.
        self.on_change: Callable[[], None] | None = None
        self.workers: list[WorkerProcess] = []
        self.lock = threading.RLock()
        #: Notified when a worker became ready, failed to start or exited.
        self.changed = threading.Condition(self.lock)
        #: One change of a step's workers at a time (replacing, resizing).
        self.step_locks: dict[int, threading.Lock] = {}
        #: Steps whose workers' states the metrics show.
        self.steps = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()  # ends the monitor's wait at once
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._respawning = True
        _LIVE.add(self)

    # -- starting ----------------------------------------------------------------

    def start_all(
        self, specs: list[WorkerSpec], on_start_waits: list[float], deadline: float | None
    ) -> None:
        """Starts a worker per spec (``on_start_waits[i]`` seconds pass after
        the last one of step ``i``) and waits until all are ready."""
        for at, spec in enumerate(specs):
            self.spawn(spec, spec.worker_index)
            last_of_step = at + 1 == len(specs) or specs[at + 1].step_index != spec.step_index
            if on_start_waits[spec.step_index] and last_of_step:
                time.sleep(on_start_waits[spec.step_index])
        timeout = None if deadline is None else round(deadline - time.monotonic(), 3)
        log.info("Waiting for all workers to start up (timeout: %s s)", timeout)
        wait_ready(self.workers, deadline)
        self.publish()

    def spawn(self, spec: WorkerSpec, number: int) -> WorkerProcess:
        process, conn = launch(self._start_method, spec, _process_name(spec, number))
        worker = WorkerProcess(spec, number, process, conn)
        with self.lock:
            self.workers.append(worker)
        return worker

    # -- changing the workers while the flow serves ---------------------------------

    def add(self, spec: WorkerSpec, number: int, *, hold: bool) -> WorkerProcess:
        """Any thread: starts a worker in ``spec.slot`` (free) beside the
        others; with ``hold`` it takes no task until ``release``. The
        monitor sees it become ready (``changed``), or fail to."""
        if hold:
            self._control.hold(spec.slot)
        else:
            self._control.release(spec.slot)
        worker = self.spawn(spec, number)
        worker.trial = True
        self._wake()
        return worker

    def release(self, worker: WorkerProcess) -> None:
        """A worker ``add``ed with ``hold`` takes tasks from now on."""
        self._control.release(worker.spec.slot)

    def retire(self, worker: WorkerProcess) -> None:
        """Any thread: the worker takes no more tasks, finishes those it
        holds and exits; its slot is free once it did."""
        with self.lock:
            worker.retiring = True
            worker.respawn_at = None
            self._control.retire(worker.spec.slot)
            if worker.dead:  # waiting for a respawn: nothing to wait for
                self._forget(worker)
        self._wake()

    def of_step(self, step_index: int) -> list[WorkerProcess]:
        """The step's workers now (any state)."""
        with self.lock:
            return [w for w in self.workers if w.step_index == step_index]

    def free_slot(self, slots: range) -> int | None:
        """A slot of ``slots`` no worker holds."""
        with self.lock:
            taken = {w.spec.slot for w in self.workers}
        return next((slot for slot in slots if slot not in taken), None)

    def publish(self) -> None:
        """Puts each step's worker counts where the metrics read them."""
        for step in range(self.steps):
            self._control.set_workers(step, *states(self.of_step(step)))

    def step_lock(self, step_index: int) -> threading.Lock:
        with self.lock:
            return self.step_locks.setdefault(step_index, threading.Lock())

    def _forget(self, worker: WorkerProcess) -> None:
        with self.lock:
            if worker in self.workers:
                self.workers.remove(worker)
            self.changed.notify_all()
        if worker.conn is not None:
            worker.conn.close()
            worker.conn = None
        _close(worker.process)

    def _wake(self) -> None:
        """Ends the monitor's wait, so it watches the workers as they are."""
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # stopped

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
            if self.on_scale is not None:
                self.on_scale()
            self.publish()
            with self.lock:
                workers = list(self.workers)
            for w in workers:
                if w.respawn_at is not None and now >= w.respawn_at:
                    self._respawn(w)
                    self._changed()
            by_conn = {w.conn: w for w in workers if w.conn is not None}
            by_sentinel = {w.process.sentinel: w for w in workers if not w.dead}
            pending = [w.respawn_at for w in workers if w.respawn_at is not None]
            period = MONITOR_TICK if self.on_scale is None else SCALE_TICK
            tick = min([period, *(max(0.0, t - now) for t in pending)])
            if not by_conn and not by_sentinel and not pending and self.on_scale is None:
                return
            for ready in wait([*by_conn, *by_sentinel, self._wake_r], timeout=tick):
                if self._stop.is_set():
                    return
                if ready == self._wake_r:
                    try:
                        os.read(self._wake_r, 512)
                    except OSError:
                        pass
                elif ready in by_conn:
                    w = by_conn[ready]
                    was_ready = w.ready
                    w.handle_control()
                    if (w.ready and not was_ready) or w.failure is not None:
                        w.trial = w.trial and not w.ready  # from now on, respawned if it dies
                        w.ready_at = time.monotonic()
                        with self.changed:
                            self.changed.notify_all()
                        self._changed()
                elif ready in by_sentinel:
                    self._died(by_sentinel[ready])
                    self._changed()

    def _changed(self) -> None:
        if (hook := self.on_change) is not None:
            try:
                hook()
            except Exception:
                log.exception("Could not tell of a change of the workers")

    def _died(self, w: WorkerProcess) -> None:
        w.dead = True
        w.process.join(1.0)
        w.drain_control()
        if not self._respawning:
            return  # the flow is stopping: workers exit on purpose
        if w.retiring or (w.trial and not w.ready):
            # it was told to go, or it failed to start: its slot is free
            # again; a task it still held (it was killed) fails
            keys = self._control.claims(w.spec.slot)
            self._control.clear_claims(w.spec.slot)
            if keys:
                self._on_death(w, w.exit_description(), keys)
            self._forget(w)
            return
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
        delay = w.note_death(now)
        if delay is None:
            log.error(
                "A worker of %s died %d times in %.0f s; not respawning it again",
                w.step_name,
                len(w.deaths),
                RESPAWN_WINDOW,
            )
            if all(x.given_up for x in self.workers if x.step_index == w.step_index):
                self._on_step_down(w.step_name, "its workers keep dying")
            return
        w.respawn_at = now + delay

    def _respawn(self, w: WorkerProcess) -> None:
        w.respawn_at = None
        if w.conn is not None:
            w.conn.close()
        _close(w.process)
        try:
            w.process, w.conn = launch(self._start_method, w.spec, _process_name(w.spec, w.number))
            w.ready, w.failure, w.dead = False, None, False
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
        deadline = time.monotonic() + grace
        # the thread is handed the sentinels only: a finished thread's work
        # item lives on a moment, and must not keep the segments open
        await asyncio.to_thread(_wait_all, self.sentinels_alive(), deadline)
        self.kill_all()

    def join_blocking(self, grace: float) -> None:
        """``join`` for a thread of its own."""
        _wait_all(self.sentinels_alive(), time.monotonic() + grace)
        self.kill_all()

    @property
    def stopping(self) -> bool:
        """The flow is stopping or healing: these workers are going."""
        return not self._respawning

    def stop_respawning(self) -> None:
        """From now on exits are expected: no failing of tasks, no respawn."""
        self._respawning = False
        with self.changed:
            for w in self.workers:
                w.respawn_at = None
            self.changed.notify_all()  # nobody waits for a worker of these any more

    def stop_monitor(self) -> None:
        self._respawning = False
        self._stop.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        self._thread = None

    def kill_all(self) -> None:
        """Stops the monitor, terminates what is left and reaps it (bounded)."""
        self.stop_monitor()
        with self.lock:
            workers, self.workers = self.workers, []
        for w in workers:
            if w.process is not None and w.process.is_alive():
                w.process.terminate()
        for w in workers:
            if w.process is None:
                continue
            w.process.join(2.0)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2.0)
            _close(w.process)
        for w in workers:
            if w.conn is not None:
                w.conn.close()
                w.conn = None
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


def _wait_all(sentinels: list[int], deadline: float) -> None:
    """Waits until every process of ``sentinels`` ended, or ``deadline``."""
    alive = list(sentinels)
    while alive and (left := deadline - time.monotonic()) > 0:
        ended = wait(alive, left)
        alive = [s for s in alive if s not in ended]
