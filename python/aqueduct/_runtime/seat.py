"""This process's seat at a running flow: the client slot it submits through
(taken on its first call) and, in a process forked from the flow's owner,
what it knows of the owner — whether it lives (``OwnerWatch``) and what it
says (``Follower``: the flow went down; the segments it runs on now)."""

from __future__ import annotations

import asyncio
import os
from typing import Protocol

from .._ipc.topology import Topology
from ..exceptions import FlowError, SharedMemoryCorruptError
from ..logger import log
from ..metrics import FlowMetrics
from .client import Client
from .config import FlowConfig
from .follower import Follower
from .metrics import export_periodically
from .owner import OwnerWatch
from .recovery import Recovery
from .rendezvous import Announcement

__all__ = ["PARENT_SPIN_BASE_US", "PARENT_SPIN_PER_STEP_US", "Seat"]

#: How long a client with a single task in flight spins on its result queue
#: before going back to its event loop (a kernel wake-up costs more).
PARENT_SPIN_BASE_US = 40
PARENT_SPIN_PER_STEP_US = 30


class SeatedFlow(Protocol):
    """What a seat needs of its flow (``FlowRuntime``)."""

    @property
    def config(self) -> FlowConfig: ...
    @property
    def owner_pid(self) -> int: ...
    @property
    def rendezvous_address(self) -> str | None: ...
    @property
    def generation(self) -> int: ...
    @property
    def topology(self) -> Topology | None: ...
    @property
    def recovery(self) -> Recovery | None: ...
    def metrics(self) -> FlowMetrics | None: ...
    def add_counts(self, counts: dict[str, int]) -> None: ...
    def moved(self, topology: Topology, generation: int) -> None: ...


class Seat:
    """One process's client of one flow, and its view of the flow's owner."""

    def __init__(self, flow: SeatedFlow, forked: bool) -> None:
        self._flow = flow
        self.client: Client | None = None
        #: The client slot this process took; it keeps it across heals.
        self.slot: int | None = None
        self._export_task: asyncio.Task[None] | None = None
        self.owner_watch = OwnerWatch(flow.owner_pid) if forked else None
        self._follow = forked and flow.rendezvous_address is not None
        self.follower: Follower | None = None

    @property
    def failure(self) -> str | None:
        """Why the flow cannot serve this process for good, or None."""
        if self.owner_watch is not None and self.owner_watch.poll() is not None:
            return self.owner_watch.reason
        down = self.follower.down if self.follower is not None else None
        return down.reason if down is not None and down.final else None

    def ready_client(self, loop: asyncio.AbstractEventLoop) -> Client | None:
        """This process's client when it is ready for a call on ``loop`` with
        nothing to wait for or to check first; else None (see ``client_for``)."""
        client = self.client
        if client is None or client.loop is not loop:
            return None
        watch, follower = self.owner_watch, self.follower
        if watch is not None and watch.reason is not None:
            return None
        if follower is not None and (follower.down is not None or follower.moved):
            return None
        return client

    async def client_for(
        self, loop: asyncio.AbstractEventLoop, wait_s: float
    ) -> tuple[Client, bool]:
        """This process's client, attached to ``loop``, and whether it waited
        (at most ``wait_s``) for the owner to heal the flow; raises why the
        flow cannot serve this process (its owner died, it is down for good)."""
        watch = self.owner_watch
        if watch is not None and watch.reason is not None:
            raise FlowError(watch.reason)
        follower = self._follower()
        waited = follower is not None and follower.down is not None
        if follower is not None:
            await follower.ready(wait_s)
            moved = follower.take_segments()
            if moved is not None:
                self._move(moved)
        client = self.client
        if client is None:
            topology = self._flow.topology
            if topology is None:
                raise FlowError("the flow has no shared memory: it is not running")
            client = self.client = self._claim(topology)
            self.slot = client.slot
        if loop is not client.loop:
            self._attach(client, loop)
        return client, waited

    def fail_all(self, error: BaseException) -> None:
        """Any thread: every task this process waits for fails."""
        if self.client is not None:
            self.client.fail_all_threadsafe(error)

    def drop_client(self) -> None:
        """Ends this process's client; from a thread other than its loop's,
        it is closed in its loop. Its tasks' counts go to the flow's."""
        client, self.client = self.client, None
        if client is None:
            return
        loop = client.loop
        if loop is None or loop.is_closed() or _runs_in(loop):
            self._close(client)
        else:
            loop.call_soon_threadsafe(self._close, client)

    def shared_memory_corrupt(self, detail: str) -> None:
        """Any thread: this process read what no process of the flow writes.
        In a forked client the owner is told (it heals the flow); in the
        owner, the flow goes down and heals."""
        reason = f"{detail} (found by process {os.getpid()})"
        flow = self._flow
        if self.follower is not None:
            self.follower.report(reason)
            self.fail_all(SharedMemoryCorruptError(reason))
        elif flow.recovery is not None:
            flow.recovery.shared_memory_corrupt(reason)

    def close(self, error: FlowError | None = None) -> None:
        """The flow stopped for this process (what it waits for fails with
        ``error``)."""
        if error is not None and self.client is not None:
            self.client.core.fail_all(error)
        self.drop_client()
        if self.owner_watch is not None:
            self.owner_watch.close()
        if self.follower is not None:
            self.follower.close()
            self.follower = None

    def _close(self, client: Client) -> None:
        if self._export_task is not None and not self._export_task.done():
            self._export_task.cancel()
        self._export_task = None
        self._flow.add_counts(client.close())

    def _attach(self, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        if self._export_task is not None:
            self._export_task.cancel()
        client.attach(loop)
        if self.owner_watch is not None:
            self.owner_watch.attach(loop, client.core.fail_all)
        if self.follower is not None:
            self.follower.attach(loop, client.core.fail_all)
        exporter = self._flow.config.exporter
        if exporter is not None:
            self._export_task = loop.create_task(export_periodically(self._flow.metrics, exporter))

    def _claim(self, topology: Topology) -> Client:
        """A client slot of the flow for this process: the one it had on the
        segments the flow left, or a free one."""
        config = self._flow.config
        return Client.claim(
            topology,
            config=config,
            spin_us=PARENT_SPIN_BASE_US + PARENT_SPIN_PER_STEP_US * len(config.steps),
            on_corrupt=self.shared_memory_corrupt,
            slot=self.slot,
        )

    def _follower(self) -> Follower | None:
        """Connects to the owner on the first call (a flow with several clients)."""
        if self.follower is None and self._follow:
            address = self._flow.rendezvous_address
            assert address is not None
            try:
                self.follower = Follower(address, self._flow.generation)
            except (OSError, EOFError) as exc:
                self._follow = False
                log.warning("This process cannot follow the flow through heals: %s", exc)
        return self.follower

    def _move(self, segments: Announcement) -> None:
        """The flow moved to new segments: this process's client moves too,
        keeping its slot."""
        try:
            topology, slot = Topology.adopt(
                steps=segments.steps,
                clients=segments.clients,
                fds=segments.fds,
                slot=self.slot,
                spin=self._flow.config.spin_us,
            )
        finally:
            segments.close_fds()  # adopting duplicated them
        self.drop_client()
        self._flow.moved(topology, segments.generation)
        self.slot = slot


def _runs_in(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread runs ``loop`` (or nothing runs it)."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return not loop.is_running()
