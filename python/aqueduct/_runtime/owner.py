"""What a process forked from a flow's owner knows of the owner: whether it
lives."""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable

from ..exceptions import FlowError
from ..logger import log

__all__ = ["OwnerWatch"]


class OwnerWatch:
    """In a process forked from the one that started a flow (a pre-fork web
    server's worker): learns at once that the owner died — its workers die
    with it, so nothing this process sends will be handled — and fails what
    it waits for instead of letting every call run into its timeout."""

    def __init__(self, owner_pid: int) -> None:
        self._owner_pid = owner_pid
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Why the flow cannot serve this process any more, once the owner died.
        self.reason: str | None = None
        try:
            self._fd: int | None = os.pidfd_open(owner_pid)
        except OSError:  # gone already
            self._fd = None
            self._gone()

    def poll(self) -> str | None:
        """The reason, looking at the owner now (no loop needed)."""
        if self.reason is None and self._fd is not None:
            if select.select([self._fd], [], [], 0)[0]:
                self._gone()
        return self.reason

    def attach(self, loop: asyncio.AbstractEventLoop, fail: Callable[[FlowError], None]) -> None:
        """Watches the owner from ``loop``: when it dies, ``fail`` gets the
        error every waiting call should end with."""
        self.detach()
        if self._fd is None:
            return

        def on_owner_exit() -> None:
            self.detach()
            fail(FlowError(self._gone()))

        loop.add_reader(self._fd, on_owner_exit)
        self._loop = loop

    def detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and self._fd is not None and not loop.is_closed():
            try:
                loop.remove_reader(self._fd)
            except Exception:  # the loop may be gone with its thread
                pass

    def close(self) -> None:
        self.detach()
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _gone(self) -> str:
        if self.reason is None:
            self.reason = (
                f"the process that started the flow (pid {self._owner_pid}) is gone, "
                "and its workers with it"
            )
            log.error("%s", self.reason)
        return self.reason
