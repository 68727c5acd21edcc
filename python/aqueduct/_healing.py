"""A flow heals itself when its shared memory is found corrupt: the process
that started it restarts it on fresh segments and fresh workers, in a thread
of its own (so a flow whose owner runs no event loop — a pre-fork server's
master — heals too); the tasks that were in flight have failed already, and
processes forked from the owner follow it onto the new segments (see
``_rendezvous``). At most ``HEALS_PER_WINDOW`` heals in ``HEAL_WINDOW``
seconds — past that the flow stays down and says why."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import time
from typing import TYPE_CHECKING

from ._rendezvous import Announcement
from .exceptions import FlowError, TaskTimeoutError
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
        self._lock = threading.Lock()
        self._restart: concurrent.futures.Future[None] | None = None

    @property
    def healing(self) -> bool:
        restart = self._restart
        return restart is not None and not restart.done()

    def can_heal(self, flow: Flow) -> bool:
        """Corrupt segments, in the process that runs the workers, and heals
        left in the window (or one under way)."""
        recovery = flow._recovery
        if self.healing:
            return True
        if recovery is None or not recovery.corrupt or os.getpid() != flow._owner_pid:
            return False
        now = time.monotonic()
        while self._heals and now - self._heals[0] > HEAL_WINDOW:
            self._heals.popleft()
        return len(self._heals) < HEALS_PER_WINDOW

    def start(self, flow: Flow) -> bool:
        """Any thread: starts restarting ``flow`` (once, however many ask at
        the same time). False when it may not heal."""
        with self._lock:
            if self.healing:
                return True
            if not self.can_heal(flow):
                return False
            self._heals.append(time.monotonic())
            restart: concurrent.futures.Future[None] = concurrent.futures.Future()
            restart.set_running_or_notify_cancel()  # no caller can cancel it
            self._restart = restart
        threading.Thread(
            target=_restart, args=(flow, restart), name="aqueduct-heal", daemon=True
        ).start()
        return True

    async def wait(self) -> None:
        """Until the restart under way (if any) is done; raises FlowError if
        it failed."""
        restart = self._restart
        if restart is not None:
            await asyncio.shield(asyncio.wrap_future(restart))

    async def heal_or_raise(self, flow: Flow, wait_s: float) -> None:
        """The flow is down: waits (at most ``wait_s``) for it to heal, or
        raises why it cannot."""
        if os.getpid() == flow._owner_pid and self.start(flow):
            try:
                await asyncio.wait_for(self.wait(), wait_s)
            except TimeoutError:
                raise TaskTimeoutError("the call's timeout passed while the flow healed") from None
            return
        broken = flow._recovery.broken if flow._recovery is not None else None
        if broken is not None:
            raise FlowError(broken)


def _restart(flow: Flow, done: concurrent.futures.Future[None]) -> None:
    recovery = flow._recovery
    reason = recovery.broken if recovery is not None else "corrupt shared memory"
    log.warning("Restarting the flow on fresh shared memory")  # the cause is logged already
    try:
        _on_fresh_segments(flow)
    except BaseException as exc:
        error = FlowError(f"{reason}; restarting the flow failed: {exc}")
        log.error("%s", error)
        _give_up(flow, error)
        done.set_exception(error)
        return
    log.warning("The flow was restarted on fresh shared memory")
    done.set_result(None)


def _on_fresh_segments(flow: Flow) -> None:
    """The old workers and segments go, new ones come; forked clients
    follow, keeping their client slots."""
    old = flow._topology
    claimed = old.control.clients_claimed() if old is not None else 0
    flow._seat.drop_client()  # its tasks have failed already
    supervisor = flow._supervisor
    if supervisor is not None:
        supervisor.stop_respawning()
    if old is not None:
        old.close()
    if supervisor is not None:
        supervisor.join_blocking(OLD_WORKERS_GRACE)
        flow._supervisor = None
    flow._forget_segments()
    fresh = flow._spawn_workers(RESTART_TIMEOUT)
    topology = flow._topology
    assert topology is not None
    topology.control.reserve_clients(claimed)
    fresh.start_monitor()
    if flow._rendezvous is not None:
        flow._rendezvous.announce(flow._generation, topology)


def _give_up(flow: Flow, error: FlowError) -> None:
    """The heal failed: the flow stays stopped, and forked clients know."""
    from .flow import FlowState  # flow imports this module

    flow._kill_workers()
    flow._forget_segments()
    flow._state = FlowState.STOPPED
    if flow._rendezvous is not None:
        flow._rendezvous.publish(Announcement("down", reason=str(error), final=True))
