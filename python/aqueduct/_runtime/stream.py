"""``Flow.stream``'s iterator: the parts a task's handlers emit, as they
come, then the end of the task (its final fields set, or its error)."""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from ..task import BaseTask
from .client import Client
from .runtime import FlowRuntime
from .submission import cancelled, submit

__all__ = ["TaskStream"]


class TaskStream(AsyncIterator[Any]):
    """``async for part in flow.stream(task)``: yields each part a handler
    emitted for ``task``, in order; when the loop ends, ``task`` has its
    final fields (as after ``process``), and an error of the task is raised
    after the parts sent before it. Leaving the loop early (``break``, an
    exception, cancellation) or ``aclose()`` cancels the task: workers stop
    producing for it, and what was still on its way is dropped."""

    __slots__ = (
        "__weakref__",
        "_client",
        "_future",
        "_parts",
        "_runtime",
        "_task",
        "_timeout",
        "_waiter",
    )

    def __init__(self, runtime: FlowRuntime, task: BaseTask, timeout_sec: float) -> None:
        self._runtime = runtime
        self._task: BaseTask | None = task
        self._timeout = timeout_sec
        self._client: Client | None = None
        self._future: asyncio.Future[bool] | None = None
        self._parts: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None

    # -- called by the Rust client, on the loop ------------------------------------

    def put(self, part: Any) -> None:
        self._parts.append(part)
        self.wake()

    def fail(self, error: BaseException) -> None:
        """A part could not be decoded: the stream ends with ``error``."""
        self._parts.append(_Failed(error))
        self.wake()

    def wake(self) -> None:
        """Something came (a part, or the task's end): the loop looks."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the iterator ------------------------------------------------------------

    def __aiter__(self) -> TaskStream:
        return self

    async def __anext__(self) -> Any:
        if self._task is not None:
            await self._start()
        parts = self._parts
        while not parts:
            future = self._future
            if future is None or future.done():
                self._close()
                if future is not None:
                    future.result()  # the task's error, after its parts
                raise StopAsyncIteration
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                self._cancel()
                raise
            finally:
                self._waiter = None
        part = parts.popleft()
        if type(part) is _Failed:
            self._cancel()
            raise part.error
        return part

    async def _start(self) -> None:
        task, self._task = self._task, None
        assert task is not None
        # the client holds the stream weakly: a loop left with break drops
        # the last reference, and that cancels the task (``__del__``)
        me = weakref.ref(self)
        self._client, self._future = await submit(self._runtime, task, self._timeout, me)
        if self._future is not None:
            self._future.add_done_callback(functools.partial(_wake, me))

    async def aclose(self) -> None:
        """Ends the stream now, cancelling the task if it is not done."""
        self._task = None
        self._cancel()

    def _cancel(self) -> None:
        future, client = self._future, self._client
        self._close()
        if future is not None and client is not None and not future.done():
            future.cancel()
            cancelled(self._runtime, client, future)

    def _close(self) -> None:
        future = self._future
        if future is not None and future.done() and not future.cancelled():
            future.exception()  # seen: asyncio need not log it
        self._parts.clear()
        self._future = self._client = None

    def __del__(self) -> None:
        # a loop left with break drops the iterator: its task is cancelled now
        try:
            self._cancel()
        except Exception:
            pass


def _wake(stream: weakref.ref[TaskStream], _future: Any) -> None:
    """The task ended: its stream, if any still iterates, looks."""
    alive = stream()
    if alive is not None:
        alive.wake()


class _Failed:
    """A part that failed to arrive: the stream raises ``error`` there."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error
