"""A process forked from a flow's owner follows the flow through its heals:
it learns from the owner's rendezvous (``rendezvous``) that the flow went
down — failing what it waits for at once — and which segments the flow runs
on once it healed, and tells the owner when it found them corrupt itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from ..exceptions import FlowError, SharedMemoryCorruptError
from ..logger import log
from .rendezvous import Announcement, OwnerLink

__all__ = ["Follower"]

#: Bound on connecting to the owner and hearing the current segments.
HANDSHAKE_TIMEOUT = 5.0
#: How long a call waits for the owner to heal a flow that went down (within
#: its own timeout): a heal takes the workers' ``on_start``, usually well
#: under this.
HEAL_WAIT = 30.0


class Follower:
    """What the owner of the flow said to this forked process, as it says it."""

    def __init__(self, address: str, generation: int) -> None:
        #: The segments this process runs on (the owner numbers each set).
        self.generation = generation
        #: The flow is down (until new segments come), and why.
        self.down: Announcement | None = None
        self._pending: Announcement | None = None
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_down: Callable[[BaseException], None] | None = None
        self._link = OwnerLink(address, HANDSHAKE_TIMEOUT)
        # the owner speaks first: the current segments, and whether it is down
        said = self._link.receive(HANDSHAKE_TIMEOUT)
        while said is not None:
            self._take(said)
            said = self._link.receive(0)

    def attach(
        self, loop: asyncio.AbstractEventLoop, on_down: Callable[[BaseException], None]
    ) -> None:
        """Hears the owner from ``loop``; ``on_down`` fails what waits."""
        self.detach()
        self._loop, self._on_down = loop, on_down
        self._changed = asyncio.Event()
        loop.add_reader(self._link.fileno(), self._readable)

    def detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            try:
                loop.remove_reader(self._link.fileno())
            except Exception:  # the loop may be gone with its thread
                pass

    def close(self) -> None:
        self.detach()
        if self._pending is not None:
            self._pending.close_fds()
            self._pending = None
        self._link.close()

    @property
    def moved(self) -> bool:
        """The flow runs on new segments this process has not taken yet."""
        return self._pending is not None

    def take_segments(self) -> Announcement | None:
        """New segments the flow runs on, once (their fds are the caller's)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self.generation = pending.generation
        return pending

    async def ready(self, wait_s: float) -> None:
        """Returns when the flow serves (new segments may be waiting in
        ``take_segments``); while it is down, waits for the owner to heal it,
        at most ``wait_s`` seconds; raises why it does not serve."""
        deadline = time.monotonic() + min(wait_s, HEAL_WAIT)
        while (down := self.down) is not None:
            remaining = deadline - time.monotonic()
            if down.final or remaining <= 0:
                raise _error(down)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    def report(self, reason: str) -> None:
        """This process found the shared memory corrupt: the owner heals."""
        self.down = Announcement("down", reason=reason, corrupt=True)
        self._link.report(reason)

    def _readable(self) -> None:
        try:
            said = self._link.receive(0)
        except EOFError:
            # the owner stopped the flow or died (its OwnerWatch says which)
            self.detach()
            return
        if said is not None:
            self._take(said)
            self._changed.set()

    def _take(self, said: Announcement) -> None:
        if said.kind == "topology":
            if said.generation == self.generation:
                said.close_fds()  # the ones this process runs on already
                return
            if self._pending is not None:
                self._pending.close_fds()
            self._pending, self.down = said, None
            log.info("The flow runs on new shared memory (generation %d)", said.generation)
        elif said.kind == "down":
            self.down = said
            if self._on_down is not None:
                self._on_down(_error(said))


def _error(down: Announcement) -> FlowError:
    return SharedMemoryCorruptError(down.reason) if down.corrupt else FlowError(down.reason)
