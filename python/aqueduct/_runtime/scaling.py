"""Sizing elastic steps (``FlowStep(nprocs=(min, max))``), on the monitor's
thread every ``SCALE_TICK``.

What it reads is in shared memory already: a step's queue length, and
whether each of its workers holds a batch (its claim slot is not empty). The
*demand* of a step is its busy workers plus the batches waiting in its
queue. It grows when every worker is busy and tasks have waited for
``grow_after``: to the demand, at most ``max``, all at once (interpreters
started together are all ready sooner than one after the other, even on two
cores), and — unless the step ``oversubscribe``s — by no more workers than
the idle cores can keep busy: from ``/proc``, the cores the machine left
idle (and the flow's workers left unused) over the last look, and the share
of a core the step's workers use (a worker waiting on an accelerator uses
little; one computing, a whole core). After growing it waits for a look at
the new workers working before it grows again. It shrinks to the highest
demand of the last ``shrink_after`` seconds (at least ``min``) once that
long passed since it last grew, retiring idle workers first, the highest
numbers first: after a burst, the step is back to ``min`` ``shrink_after``
seconds after the last task waited.
"""

from __future__ import annotations

import collections
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import _core
from ..elastic import Elastic
from ..logger import log
from ..step import FlowStep
from .specs import WorkerSpecs
from .supervisor import Supervisor
from .worker_process import RESPAWN_BACKOFF_MAX, WorkerProcess

__all__ = ["Scaler"]

#: How often CPU times are read.
CPU_PERIOD = 0.25
#: The least share of a core a new worker is assumed to take.
LEAST_SHARE = 0.05


@dataclass
class _StepState:
    elastic: Elastic
    batch_size: int
    waiting_since: float | None = None
    #: When it last grew (or started): it shrinks no earlier than
    #: ``shrink_after`` later.
    grown_at: float = field(default_factory=time.monotonic)
    #: (time, demand) of the last ``shrink_after`` seconds, demands
    #: decreasing: the first is the highest (a sliding maximum).
    peaks: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    started: list[WorkerProcess] = field(default_factory=list)
    failures: int = 0
    paused_until: float = 0.0


class Scaler:
    """Grows and shrinks the elastic steps of one flow (see the module docs)."""

    def __init__(
        self,
        supervisor: Supervisor,
        specs: WorkerSpecs,
        queues: Sequence[_core.Queue],
        control: _core.Control,
        steps: Sequence[FlowStep],
    ) -> None:
        self._supervisor = supervisor
        self._specs = specs
        self._queues = queues
        self._control = control
        self._steps = {
            index: _StepState(step.elastic, step.batch_size)
            for index, step in enumerate(steps)
            if step.elastic is not None
        }
        self._cores = len(os.sched_getaffinity(0))
        self._cpu = _CpuShares()

    def __call__(self) -> None:
        now = time.monotonic()
        self._cpu.refresh(self._supervisor, now)
        for index, state in self._steps.items():
            lock = self._supervisor.step_lock(index)
            if not lock.acquire(blocking=False):
                continue  # its handler is being replaced
            try:
                self._size(index, state, now)
            except Exception:
                log.exception("could not resize %s", self._specs.step_names[index])
            finally:
                lock.release()

    def _size(self, index: int, state: _StepState, now: float) -> None:
        self._note_failures(index, state, now)
        workers = [w for w in self._supervisor.of_step(index) if w.live]
        ready = [w for w in workers if w.ready and not w.dead]
        starting = len(workers) - len(ready)
        busy = {w for w in ready if self._control.busy(w.spec.slot)}
        queued = len(self._queues[index])
        demand = len(busy) + math.ceil(queued / state.batch_size)
        elastic = state.elastic
        peaks = state.peaks
        while peaks and peaks[-1][1] <= demand:
            peaks.pop()
        peaks.append((now, demand))
        while peaks[0][0] < now - elastic.shrink_after:
            peaks.popleft()
        if queued and len(busy) >= len(ready) and not starting:
            if state.waiting_since is None:
                state.waiting_since = now
            if now - state.waiting_since >= elastic.grow_after and now >= state.paused_until:
                wanted = min(demand, elastic.max) - len(workers)
                if self._grow(index, state, workers, wanted):
                    state.grown_at = now
                state.waiting_since = None
        else:
            state.waiting_since = None
        if now - state.grown_at >= elastic.shrink_after:
            keep = max(elastic.min, peaks[0][1])
            if not starting and len(ready) > keep:
                idle_first = sorted(ready, key=lambda w: (w in busy, -w.number))
                for w in idle_first[: len(ready) - keep]:
                    self._supervisor.retire(w)
                log.info(
                    "%s: %d worker(s) not needed; %d serve",
                    self._specs.step_names[index],
                    len(ready) - keep,
                    keep,
                )

    def _grow(
        self, index: int, state: _StepState, workers: list[WorkerProcess], wanted: int
    ) -> int:
        """Starts up to ``wanted`` more workers; returns how many it did."""
        if not state.elastic.oversubscribe:
            # what a worker of the step takes, from those that served the
            # whole last period (a starting interpreter's CPU says nothing)
            if any(w.ready_at >= self._cpu.since for w in workers if w.ready):
                return 0  # it grew lately: the last look did not see the new workers work
            share = self._cpu.mean_of([w.process.pid for w in workers if w.ready])
            used, idle = self._cpu.total, self._cpu.idle
            if used is None or idle is None or share is None:
                return 0  # no CPU times to judge by yet
            each = max(LEAST_SHARE, share)
            # cores neither the flow's workers nor anything else (the callers) use
            room = min(self._cores - used, idle)
            wanted = min(wanted, math.floor(room / each))
        taken = {w.number for w in workers}
        numbers = (n for n in range(state.elastic.max) if n not in taken)
        added = 0
        for number in list(numbers)[: max(0, wanted)]:
            slot = self._supervisor.free_slot(self._specs.slots[index])
            if slot is None:
                break  # retiring workers still hold the slots
            spec = self._specs.make(index, number, slot)
            state.started.append(self._supervisor.add(spec, number, hold=False))
            added += 1
        if added:
            log.info(
                "%s: tasks wait; starting %d more worker(s) (%d in all)",
                self._specs.step_names[index],
                added,
                len(workers) + added,
            )
        return added

    def _note_failures(self, index: int, state: _StepState, now: float) -> None:
        """A worker it started that exited before it was ready: the step
        stops growing for a while (longer after each failure)."""
        with self._supervisor.lock:
            present = set(map(id, self._supervisor.workers))
        still = []
        for w in state.started:
            if w.ready:
                state.failures = 0
            elif id(w) not in present:
                state.failures += 1
                pause = min(0.1 * 2**state.failures, RESPAWN_BACKOFF_MAX * 6)
                state.paused_until = now + pause
                log.error(
                    "%s: a new worker failed to start; not growing for %.1f s:\n%s",
                    self._specs.step_names[index],
                    pause,
                    w.failure or w.exit_description(),
                )
            else:
                still.append(w)
        state.started = still


class _CpuShares:
    """The share of a core each of the flow's workers used lately, and the
    cores the machine left idle."""

    def __init__(self) -> None:
        self.shares: dict[int, float] = {}  # pid: cores used over the last period
        #: When the last period began.
        self.since = 0.0
        self._last = 0.0
        self._ticks: dict[int, int] = {}  # pid: CPU clock ticks at the last look
        self._hz = os.sysconf("SC_CLK_TCK")
        #: Cores idle over the last period (None before two looks).
        self.idle: float | None = None
        self._machine: tuple[int, int] | None = None  # (idle, all) ticks at the last look

    @property
    def total(self) -> float | None:
        """Cores the flow's workers used (None before two looks)."""
        return sum(self.shares.values()) if self.shares else None

    def mean_of(self, pids: list[int | None]) -> float | None:
        known = [self.shares[pid] for pid in pids if pid in self.shares]
        return sum(known) / len(known) if known else None

    def refresh(self, supervisor: Supervisor, now: float) -> None:
        elapsed = now - self._last
        if elapsed < CPU_PERIOD:
            return
        with supervisor.lock:
            pids = [w.process.pid for w in supervisor.workers if not w.dead and w.process.pid]
        ticks = {pid: t for pid in pids if (t := _cpu_ticks(pid)) is not None}
        self.shares = {
            pid: (t - self._ticks[pid]) / self._hz / elapsed
            for pid, t in ticks.items()
            if pid in self._ticks
        }
        self._ticks, self.since, self._last = ticks, self._last, now
        machine = _machine_ticks()
        if machine is not None and self._machine is not None:
            idle, total = (now_ - then for now_, then in zip(machine, self._machine, strict=True))
            cpus = os.cpu_count() or 1
            self.idle = cpus * idle / total if total > 0 else None
        self._machine = machine


def _machine_ticks() -> tuple[int, int] | None:
    """Idle (with I/O wait) and all CPU time of the machine, in clock ticks."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields[:8])
    except (OSError, IndexError, ValueError):
        return None


def _cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of ``pid`` in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None
