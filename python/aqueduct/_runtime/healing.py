"""A flow heals itself when its shared memory is found corrupt: the process
that started it restarts it on fresh segments and fresh workers, in a thread
of its own (so a flow whose owner runs no event loop — a pre-fork server's
master — heals too); the tasks that were in flight have failed already, and
processes forked from the owner follow it onto the new segments (see
``rendezvous``). At most ``HEALS_PER_WINDOW`` heals in ``HEAL_WINDOW``
seconds — past that the flow stays down and says why."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import time
from typing import Protocol

from ..exceptions import FlowError, TaskTimeoutError
from ..logger import log
from .recovery import Recovery

__all__ = ["Healer"]

HEALS_PER_WINDOW = 3
HEAL_WINDOW = 60.0


class Healable(Protocol):
    """What a healer needs of its flow (``FlowRuntime``)."""

    @property
    def owner_pid(self) -> int: ...
    @property
    def recovery(self) -> Recovery | None: ...
    def restart_on_fresh_segments(self) -> None: ...
    def give_up(self, error: FlowError) -> None: ...


class Healer:
    """One flow's self-healing: whether it may heal now, and the restart."""

    def __init__(self, flow: Healable) -> None:
        self._flow = flow
        self._heals: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        self._restart: concurrent.futures.Future[None] | None = None

    @property
    def healing(self) -> bool:
        restart = self._restart
        return restart is not None and not restart.done()

    def can_heal(self) -> bool:
        """Corrupt segments, in the process that runs the workers, and heals
        left in the window (or one under way)."""
        if self.healing:
            return True
        recovery = self._flow.recovery
        if recovery is None or not recovery.corrupt or os.getpid() != self._flow.owner_pid:
            return False
        now = time.monotonic()
        while self._heals and now - self._heals[0] > HEAL_WINDOW:
            self._heals.popleft()
        return len(self._heals) < HEALS_PER_WINDOW

    def start(self) -> bool:
        """Any thread: starts restarting the flow (once, however many ask at
        the same time). False when it may not heal."""
        with self._lock:
            if self.healing:
                return True
            if not self.can_heal():
                return False
            self._heals.append(time.monotonic())
            restart: concurrent.futures.Future[None] = concurrent.futures.Future()
            restart.set_running_or_notify_cancel()  # no caller can cancel it
            self._restart = restart
        threading.Thread(
            target=self._run, args=(restart,), name="aqueduct-heal", daemon=True
        ).start()
        return True

    async def wait(self) -> None:
        """Until the restart under way (if any) is done; raises FlowError if
        it failed."""
        restart = self._restart
        if restart is not None:
            await asyncio.shield(asyncio.wrap_future(restart))

    async def heal_or_raise(self, wait_s: float) -> None:
        """The flow is down: waits (at most ``wait_s``) for it to heal, or
        raises why it cannot."""
        if os.getpid() == self._flow.owner_pid and self.start():
            try:
                await asyncio.wait_for(self.wait(), wait_s)
            except TimeoutError:
                raise TaskTimeoutError("the call's timeout passed while the flow healed") from None
            return
        recovery = self._flow.recovery
        if recovery is not None and recovery.broken is not None:
            raise FlowError(recovery.broken)

    def _run(self, done: concurrent.futures.Future[None]) -> None:
        recovery = self._flow.recovery
        reason = recovery.broken if recovery is not None else "corrupt shared memory"
        log.warning("Restarting the flow on fresh shared memory")  # the cause is logged already
        try:
            self._flow.restart_on_fresh_segments()
        except BaseException as exc:
            error = FlowError(f"{reason}; restarting the flow failed: {exc}")
            log.error("%s", error)
            self._flow.give_up(error)
            done.set_exception(error)
            return
        log.warning("The flow was restarted on fresh shared memory")
        done.set_result(None)
