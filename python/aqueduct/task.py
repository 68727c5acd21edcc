"""The task base class: a container of arguments and results."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import Any, Protocol

from . import _core
from ._ipc import handling

__all__ = ["DEFAULT_PRIORITY", "BaseTask", "HasReadany"]


class HasReadany(Protocol):
    """What ``share_value_with_data`` reads from: aiohttp's ``StreamReader``."""

    async def readany(self) -> bytes: ...


DEFAULT_PRIORITY = 0


class BaseTask:
    """Subclass it with the fields your handlers read and set.

    The task travels to worker processes by pickle; when ``Flow.process``
    returns, the fields handlers set are copied onto the caller's object.
    """

    task_id: str = ""
    priority: int = DEFAULT_PRIORITY
    expiration_time: float | None = None
    #: The ``X-Request-ID`` of the HTTP request this task was made from
    #: (``aqueduct.http``: the client's, or one the server made); None for
    #: a task given to ``Flow.process``, unless its caller sets one.
    request_id: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task_id = _core.uuid4() or str(uuid.uuid4())
        self.priority = DEFAULT_PRIORITY

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} {self.__dict__}>"

    def __str__(self) -> str:
        return self.__repr__()

    def set_timeout(self, timeout_sec: float) -> None:
        """The task expires ``timeout_sec`` seconds from now."""
        self.expiration_time = monotonic() + timeout_sec

    def set_priority(self, priority: int) -> None:
        self.priority = priority

    def is_expired(self) -> bool:
        return self.expiration_time is not None and monotonic() >= self.expiration_time

    def emit(self, part: Any) -> bool:
        """In a handler: sends ``part`` (any picklable object; big buffers go
        through shared memory) to the caller at once — ``async for part in
        flow.stream(task)`` yields it; a caller of ``process`` gets none.
        Parts of a task arrive in the order they were emitted, before its
        final fields. Returns False when the caller no longer wants the task
        (it stopped iterating, was cancelled, or its timeout passed): stop
        producing for it."""
        return handling.engine().emit(self, part)

    def finish(self) -> None:
        """In a handler of a ``continuous=True`` step: the task is done. It
        leaves the active set after this ``handle`` call and is sent on
        (to the next step, or back to its caller) at once."""
        handling.engine().finish(self)

    def is_cancelled(self) -> bool:
        """In a handler: True when the caller no longer wants the task (it
        stopped iterating a stream, was cancelled, or its timeout passed)."""
        return handling.engine().is_cancelled(self)

    def share_value(self, field_name: str) -> None:
        """Moves a numpy array (or torch CPU tensor) field into shared memory now.

        The field becomes an array (a tensor) of the same shape and dtype
        backed by the flow's shared-memory arena, so ``Flow.process`` passes
        it to workers without copying it again; a handler that changes it in
        place changes the caller's array too (as upstream). ``bytes``/
        ``bytearray`` fields are accepted and left as they are: every big
        buffer goes through shared memory on its own. Other types raise
        ``ValueError``.
        """
        if field_name not in self.__dict__:
            raise ValueError("Unknown field name")
        value = self.__dict__[field_name]
        if isinstance(value, bytes | bytearray):
            return
        from ._ipc import shm as _shm
        from ._ipc import tensors as _tensors

        if _tensors.is_tensor(value):
            self.__dict__[field_name] = _tensors.shared(value, _shm.parent_arena())
            return
        if type(value).__module__ != "numpy" or type(value).__name__ != "ndarray":
            raise ValueError(f"Type {type(value)} cannot be shared")
        if value.dtype.hasobject:
            raise ValueError("arrays of Python objects cannot be shared")
        arena = _shm.parent_arena()
        if value.flags.c_contiguous and arena.locate(value) is not None:
            return  # already in shared memory
        import numpy

        contiguous = numpy.ascontiguousarray(value)
        block = arena.place(contiguous.reshape(-1).view(numpy.uint8), 0)
        view = arena.view(block, block, contiguous.nbytes)
        shared = numpy.ndarray(value.shape, dtype=value.dtype, buffer=memoryview(view))
        self.__dict__[field_name] = shared

    async def share_value_with_data(
        self,
        field_name: str,
        content: HasReadany | Callable[[], Awaitable[bytes]],
        size: int,
    ) -> None:
        """Streams ``size`` bytes straight into shared memory and sets the
        field to a writable ``memoryview`` of them (no copy on the way to the
        workers). ``content`` is an aiohttp ``StreamReader`` (anything with an
        async ``readany()``) or such a coroutine function, e.g.
        ``request.content.readany``. Reading stops at an empty chunk; more than
        ``size`` bytes raise ``ValueError``."""
        read = content if callable(content) else getattr(content, "readany", None)
        if not callable(read):
            raise TypeError("content must have an async readany() method")
        from ._ipc import shm as _shm

        _block, view = _shm.parent_arena().alloc(max(int(size), 1), 0)
        buffer = memoryview(view)
        offset = 0
        while True:
            chunk = await read()
            if not chunk:
                break
            end = offset + len(chunk)
            if end > size:
                raise ValueError(f"content is larger than the announced size of {size} bytes")
            buffer[offset:end] = chunk
            offset = end
        self.__dict__[field_name] = buffer[:offset]

    def update(self, source_task: BaseTask, excluded_fields: set[str] | None = None) -> None:
        """Copies the fields of ``source_task`` onto this task, except the
        bookkeeping fields of ``BaseTask`` and ``excluded_fields``."""
        immutable = _BOOKKEEPING_FIELDS
        if excluded_fields:
            immutable = immutable | excluded_fields
        for field, value in source_task.__dict__.items():
            if field not in immutable:
                setattr(self, field, value)


#: What ``update`` never copies: the flow's bookkeeping (defined once, in
#: the core, for this and the Rust path that settles results).
_BOOKKEEPING_FIELDS = frozenset(_core.BOOKKEEPING_FIELDS)
