"""A flow heals itself when its shared memory is found corrupt: the next
call restarts it on fresh segments and fresh workers (the tasks that were in
flight have failed already), at most ``HEALS_PER_WINDOW`` times in
``HEAL_WINDOW`` seconds — past that the flow stays down and says why."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from typing import TYPE_CHECKING

from .exceptions import FlowError
from .logger import log

if TYPE_CHECKING:
    from .flow import Flow

__all__ = ["Healer"]

HEALS_PER_WINDOW = 3
HEAL_WINDOW = 60.0
#: Bound on starting the fresh workers (their ``on_start`` runs again).
RESTART_TIMEOUT = 120.0
#: How long the old workers get to exit before they are killed.
OLD_WORKERS_GRACE = 1.0


class Healer:
    """One flow's self-healing: whether it may heal now, and the restart."""

    def __init__(self) -> None:
        self._heals: collections.deque[float] = collections.deque()
        self._restart: asyncio.Future[None] | None = None

    def can_heal(self, flow: Flow) -> bool:
        """Corrupt segments, in the process that runs the workers, with no
        other process submitting (they could not follow onto new segments),
        and heals left in the window."""
        recovery = flow._recovery
        if recovery is None or not recovery.corrupt:
            return False
        if flow._clients != 1 or os.getpid() != flow._owner_pid:
            return False
        now = time.monotonic()
        while self._heals and now - self._heals[0] > HEAL_WINDOW:
            self._heals.popleft()
        return self._restart is not None or len(self._heals) < HEALS_PER_WINDOW

    async def heal(self, flow: Flow) -> None:
        """Restarts ``flow`` on fresh segments (once, however many callers
        ask at the same time); raises FlowError if that fails."""
        if self._restart is None:
            self._heals.append(time.monotonic())
            self._restart = asyncio.ensure_future(_restart(flow))
        restart = self._restart
        try:
            await asyncio.shield(restart)
        finally:
            if restart.done() and self._restart is restart:
                self._restart = None


async def _restart(flow: Flow) -> None:
    recovery = flow._recovery
    reason = recovery.broken if recovery is not None else "corrupt shared memory"
    log.warning("Restarting the flow on fresh shared memory")  # the cause is logged already
    flow._drop_client()  # its tasks have failed with the reason already
    supervisor = flow._supervisor
    if supervisor is not None:
        supervisor.stop_respawning()
    if flow._topology is not None:
        flow._topology.close()
    if supervisor is not None:
        await supervisor.join(OLD_WORKERS_GRACE)
        flow._supervisor = None
    flow._forget_segments()
    try:
        fresh = await asyncio.to_thread(flow._spawn_workers, RESTART_TIMEOUT)
    except BaseException as exc:
        flow._kill_workers()
        flow._forget_segments()
        from .flow import FlowState  # flow imports this module

        flow._state = FlowState.STOPPED
        raise FlowError(f"{reason}; restarting the flow failed: {exc}") from exc
    fresh.start_monitor()
    log.warning("The flow was restarted on fresh shared memory")
