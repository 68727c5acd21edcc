"""Replacing a step's handler while the flow serves (``Flow.replace_handler``).

New workers start in free slots of the step, one per worker it runs now and
with the same numbers (so the same devices), *held*: they run ``on_start``
but take no task. Once every one of them is ready they are released and the
old workers are retired at the same moment — they take no more tasks,
finish those they hold and exit — so every task is handled, by the old
handler or by the new. If a new worker fails to start (or the deadline
passes first), the new ones go and the old ones serve on untouched.
"""

from __future__ import annotations

import time

from ..exceptions import FlowError, FlowStartTimeoutError, WorkerStartError
from ..logger import log
from .specs import WorkerSpecs
from .supervisor import Supervisor
from .worker_process import WorkerProcess

__all__ = ["replace_workers"]

#: How long new workers that are sent away get to exit before they are killed.
DISCARD_GRACE = 2.0


def replace_workers(
    supervisor: Supervisor,
    specs: WorkerSpecs,
    index: int,
    handler_blob: bytes,
    start_deadline: float,
    drain_deadline: float,
) -> None:
    """Swaps step ``index``'s workers for ones running ``handler_blob``
    (blocking; see the module docs). Raises ``WorkerStartError`` or
    ``FlowStartTimeoutError`` when the new handler did not start."""
    name = specs.step_names[index]
    lock = supervisor.step_lock(index)
    if not lock.acquire(timeout=max(0.0, start_deadline - time.monotonic())):
        raise FlowError(f"another change of the workers of {name} did not end in time")
    try:
        old = [w for w in supervisor.of_step(index) if not w.retiring]
        numbers = sorted({w.number for w in old if w.live}) or list(range(specs.first(index)))
        new: list[WorkerProcess] = []
        try:
            for number in numbers:
                slot = _free_slot(supervisor, specs.slots[index], start_deadline)
                if slot is None:
                    raise FlowStartTimeoutError(
                        f"workers of {name} that are retiring held its slots until the deadline"
                    )
                spec = specs.make(index, number, slot, handler_blob)
                new.append(supervisor.add(spec, number, hold=True))
            _wait_ready(supervisor, new, name, start_deadline)
        except BaseException:
            _discard(supervisor, new)
            raise
        specs.handlers[index] = handler_blob  # respawns and growth run the new one
        for w in new:
            supervisor.release(w)
        for w in old:
            supervisor.retire(w)
        log.info("%s: %d new worker(s) serve; the old ones finish their tasks", name, len(new))
        _wait_gone(supervisor, old, name, drain_deadline)
    finally:
        lock.release()


def _free_slot(supervisor: Supervisor, slots: range, deadline: float) -> int | None:
    """A free slot of ``slots``; waits (until ``deadline``) while workers
    that retire (an elastic step shrinking) still hold them all."""
    with supervisor.changed:
        while (slot := supervisor.free_slot(slots)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or supervisor.stopping:
                return None
            supervisor.changed.wait(remaining)
    return slot


def _wait_ready(
    supervisor: Supervisor, new: list[WorkerProcess], name: str, deadline: float
) -> None:
    with supervisor.changed:
        while not all(w.ready for w in new):
            if supervisor.stopping:
                raise FlowError(f"the flow stopped while the new handler of {name} started")
            for w in new:
                if w.failure is not None:
                    raise WorkerStartError(
                        f"the new handler of {name} failed to start; the old one serves on:\n"
                        f"{w.failure}"
                    )
                if w not in supervisor.workers:
                    raise WorkerStartError(
                        f"a new worker of {name} exited while starting "
                        f"({w.exit_description()}); the old handler serves on"
                    )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FlowStartTimeoutError(
                    f"the new handler of {name} did not finish on_start in time; "
                    "the old one serves on"
                )
            supervisor.changed.wait(remaining)


def _discard(supervisor: Supervisor, new: list[WorkerProcess]) -> None:
    """The new workers go, whatever they are doing."""
    for w in new:
        supervisor.retire(w)
        w.process.terminate()
    deadline = time.monotonic() + DISCARD_GRACE
    with supervisor.changed:
        while (
            any(w in supervisor.workers for w in new)
            and time.monotonic() < deadline
            and not supervisor.stopping
        ):
            supervisor.changed.wait(deadline - time.monotonic())
    for w in new:
        if w.process.is_alive():
            w.process.kill()


def _wait_gone(
    supervisor: Supervisor, old: list[WorkerProcess], name: str, deadline: float
) -> None:
    """Until the retired workers exited; past ``deadline`` they are
    terminated (the tasks they still hold fail)."""
    with supervisor.changed:
        while any(w in supervisor.workers for w in old) and not supervisor.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            supervisor.changed.wait(remaining)
    late = [w for w in old if w.process.is_alive()]
    if late:
        log.warning("%s: %d old worker(s) did not finish in time; terminated", name, len(late))
        for w in late:
            w.process.terminate()
