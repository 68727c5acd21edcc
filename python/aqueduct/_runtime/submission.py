"""One call's way into a running flow, shared by ``Flow.process`` and
``Flow.stream``: the checks, waiting for a heal or a client slot (both count
against the call's timeout), submitting, and what a cancelled wait does."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..exceptions import FlowError, NotRunningError, SharedMemoryCorruptError, TaskTimeoutError
from ..task import BaseTask
from .client import Client
from .runtime import FlowRuntime
from .state import FlowState

__all__ = ["cancelled", "submit"]


async def submit(
    runtime: FlowRuntime, task: BaseTask, timeout_sec: float, sink: Any = None
) -> tuple[Client, asyncio.Future[bool] | None]:
    """Sends ``task`` to the flow: the client it went through and the future
    of its answer (None: no step's condition holds, nothing to do). With a
    ``sink``, its parts go to ``sink.put`` as they come."""
    if runtime.state is not FlowState.RUNNING:
        raise NotRunningError(f"Flow is not running (state: {runtime.state.value})")
    if not timeout_sec or timeout_sec <= 0:
        raise ValueError(f"timeout_sec must be > 0, got {timeout_sec!r}")
    called = time.monotonic()
    # (no local refers to the recovery: a traceback through this frame
    # would keep the segments it knows mapped until a garbage collection)
    healed = runtime.healer.healing or runtime.broken()
    if healed:
        await runtime.healer.heal_or_raise(timeout_sec)
    loop = asyncio.get_running_loop()
    seat = runtime.seat
    client = seat.ready_client(loop)  # the common case: nothing to wait for
    followed = False
    if client is None:
        client, followed = await seat.client_for(loop, timeout_sec)
    if healed or followed:  # what waiting for a heal took counts against the timeout
        timeout_sec -= time.monotonic() - called
        if timeout_sec <= 0:
            raise TaskTimeoutError("the call's timeout passed while the flow healed")
    try:
        future = client.core.submit(task, timeout_sec, sink)
    except SharedMemoryCorruptError as exc:
        seat.shared_memory_corrupt(str(exc))
        raise
    return client, future


def cancelled(runtime: FlowRuntime, client: Client, future: asyncio.Future[bool]) -> None:
    """The caller's wait for ``future`` was cancelled: workers skip its
    task (or stop producing for it). Raises FlowError when the cancel came
    from the flow stopping."""
    client.core.cancel(future)
    if runtime.state in (FlowState.STOPPING, FlowState.STOPPED):
        raise FlowError("Task was cancelled: the flow is stopping") from None
