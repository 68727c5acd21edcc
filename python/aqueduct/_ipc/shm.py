"""Big payloads through shared memory.

Tasks are pickled with protocol 5. Every out-of-band buffer of at least
``THRESHOLD`` bytes — numpy arrays (C- or F-contiguous, not object dtype), and
``bytes``/``bytearray``/``memoryview`` fields of the task, and its torch CPU
tensor fields (see ``tensors``) — goes into a memfd
arena instead of the message; the message carries ``(arena, block, offset,
length)`` references and the receiver rebuilds the objects over views of the
arena, without copying. A buffer that already lives in an arena (an array a
previous step received) is passed on by reference, so a payload is copied at
most once on the way in and never between steps; arrays handlers set come back
to the caller the same way.

Lifetimes: each process allocates only in its own arena (the first ones are
the clients'). A client frees: blocks of its arena once no task in flight and
no view in the parent refers to them, and the blocks results arrive in once
the caller's views of them are gone. A worker frees the blocks of workers'
arenas its task no longer refers to when it passes the task on.
"""

from __future__ import annotations

import copy
import os
import pickle
import sys
import threading
from collections.abc import Iterable
from typing import Any

import cloudpickle

from .. import _core
from .._core import BUFFER_THRESHOLD, FLAGS, INLINE_LIMIT
from ..exceptions import SharedMemoryFullError, TaskSerializationError
from .protocol import (
    FLAG_BODY,
    FLAG_REFS,
    KIND_STATE,
    KIND_TASK,
    KIND_TASK_BY_VALUE,
    PICKLE_PROTOCOL,
    decode_state,
)
from .tensors import TensorOutOfBand, is_big_tensor, is_tensor

#: Buffers at least this large travel through shared memory.
THRESHOLD = BUFFER_THRESHOLD
#: Default size of each arena (sparse: memory is used only by live buffers).
DEFAULT_SHM_SIZE = 1 << 30

_BYTES_TYPES = (bytes, bytearray, memoryview)
_BYTES_EXACT = frozenset(_BYTES_TYPES)

Ref = tuple[int, int, int, int]

_parent_arena: _core.SharedArena | None = None
_parent_lock = threading.Lock()


def parent_arena(size: int | None = None) -> _core.SharedArena:
    """Where ``share_value`` puts buffers in this process: the arena of the
    flow whose client this process is (or that it started), so its tasks
    pass them on without a copy. With no flow running, an arena of the
    process's own, which no worker maps (a flow copies from it once)."""
    global _parent_arena, _parent_pid
    with _parent_lock:
        if _parent_arena is None or _parent_pid != os.getpid():
            _parent_arena = _core.SharedArena.create(size or _default_size(), True)
            _parent_pid = os.getpid()
        return _parent_arena


_parent_pid = -1


def set_parent_arena(arena: _core.SharedArena) -> None:
    """Makes ``arena`` (a running flow's) the one ``share_value`` uses."""
    global _parent_arena, _parent_pid
    with _parent_lock:
        _parent_arena, _parent_pid = arena, os.getpid()


def forget_arenas(arenas: Iterable[_core.SharedArena]) -> None:
    """A flow stopped: its arenas are no longer where new buffers go (a
    flow started later gets fresh segments, whatever became of these)."""
    global _parent_arena
    with _parent_lock:
        if any(arena is _parent_arena for arena in arenas):
            _parent_arena = None


def _default_size() -> int:
    try:
        return int(os.environ.get("AQUEDUCT_SHM_SIZE", DEFAULT_SHM_SIZE))
    except ValueError:
        return DEFAULT_SHM_SIZE


class _OutOfBand:
    """Marks a big bytes-like task field for out-of-band pickling."""

    __slots__ = ("value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return (_rebuild_bytes, (type(self.value).__name__, pickle.PickleBuffer(self.value)))


def _rebuild_bytes(kind: str, buffer: Any) -> bytes | bytearray | memoryview:
    if kind == "bytes":
        return bytes(buffer)
    if kind == "bytearray":
        return bytearray(buffer)
    return memoryview(buffer)


def _with_big_fields_out_of_band(task: Any) -> Any:
    fields = getattr(task, "__dict__", None)
    if not fields:
        return task
    tensors = "torch" in sys.modules
    for value in fields.values():
        if type(value) in _BYTES_EXACT or (tensors and is_tensor(value)):
            break
    else:
        return task  # the common case: no bytes-like or tensor field at all
    big: dict[str, Any] = {}
    for name, value in fields.items():
        if isinstance(value, _BYTES_TYPES) and _nbytes(value) >= THRESHOLD:
            big[name] = _OutOfBand(value)
        elif tensors and is_big_tensor(value):
            big[name] = TensorOutOfBand(value)
    if not big:
        return task
    clone = copy.copy(task)
    clone.__dict__.update(big)
    return clone


def _nbytes(value: bytes | bytearray | memoryview) -> int:
    return value.nbytes if isinstance(value, memoryview) else len(value)


class SharedMemory:
    """One process's view of a flow's arenas: ``arenas[own]`` is where it
    allocates (``None``: it never copies buffers in)."""

    def __init__(self, arenas: list[_core.SharedArena], own: int | None) -> None:
        self.arenas = arenas
        self.own = own
        # state of the dumps in progress, read by the buffer callback (one
        # bound method made once: a closure per call costs on every task)
        self._refs: list[Ref] = []
        self._key = 0
        self._callback = self._on_buffer

    def close(self) -> None:
        """Lets go of the arenas now: the bound buffer callback kept this
        object (and them) alive until a garbage collection."""
        self.arenas = []
        del self._callback

    # -- sending ---------------------------------------------------------------

    def dumps(self, task: Any, key: int, by_value: bool) -> tuple[int, bytes, list[Ref]]:
        """Pickles ``task``; returns ``(kind, payload, refs)``. ``payload``
        starts with the encoded refs when there are any (see ``split``); a
        pickle larger than ``INLINE_LIMIT`` goes into the arena too, as the
        last ref (``FLAG_BODY``), so no task is too large for a queue."""
        refs: list[Ref] = []
        self._refs, self._key = refs, key
        obj = _with_big_fields_out_of_band(task)
        try:
            if not by_value:
                try:
                    payload = pickle.dumps(obj, PICKLE_PROTOCOL, buffer_callback=self._callback)
                except (pickle.PicklingError, AttributeError):
                    self.discard(refs)
                    refs.clear()
                    by_value = True
            if by_value:
                payload = cloudpickle.dumps(obj, PICKLE_PROTOCOL, buffer_callback=self._callback)
        except Exception as exc:
            self.discard(refs)
            if isinstance(exc, TaskSerializationError | SharedMemoryFullError):
                raise
            raise TaskSerializationError(f"cannot pickle {type(task).__name__}: {exc}") from exc
        kind = KIND_TASK_BY_VALUE if by_value else KIND_TASK
        if len(payload) > INLINE_LIMIT and self.own is not None:
            try:
                block = self.arenas[self.own].place(payload, key)
            except Exception:
                self.discard(refs)
                raise
            refs.append((self.own, block, block, len(payload)))
            return kind | FLAG_REFS | FLAG_BODY, encode_refs(refs), refs
        if refs:
            return kind | FLAG_REFS, encode_refs(refs) + payload, refs
        return kind, payload, refs

    def dumps_part(self, part: Any, key: int) -> tuple[int, bytes, list[Ref]]:
        """A streamed part as ``dumps`` encodes a task (a big bytes-like part
        goes through shared memory as one buffer)."""
        if isinstance(part, _BYTES_TYPES) and _nbytes(part) >= THRESHOLD:
            part = _OutOfBand(part)
        return self.dumps(part, key, by_value=False)

    def _on_buffer(self, buffer: pickle.PickleBuffer) -> bool:
        """pickle's buffer callback: True keeps the buffer in-band."""
        try:
            raw = buffer.raw()
        except BufferError:
            return True  # not contiguous: in-band
        size = raw.nbytes
        if size < THRESHOLD:
            return True
        for index, arena in enumerate(self.arenas):
            found = arena.locate(raw)
            if found is not None:
                self._refs.append((index, found[0], found[1], size))
                return False
        if self.own is None:
            return True
        block = self.arenas[self.own].place(raw, self._key)
        self._refs.append((self.own, block, block, size))
        return False

    def discard(self, refs: Iterable[Ref]) -> None:
        """Frees blocks this process placed for a message never sent."""
        for arena, block, _offset, _size in refs:
            if arena == self.own:
                self.arenas[arena].free(block)

    # -- receiving -------------------------------------------------------------

    def loads(self, kind: int, payload: bytes) -> tuple[Any, list[Ref]]:
        """Unpickles a message payload; returns the task and its refs."""
        if kind & ~FLAGS == KIND_STATE:
            return decode_state(payload), []
        if not kind & FLAG_REFS:
            return pickle.loads(payload), []
        refs, inline = split(payload)
        views = [self.arenas[a].view(block, offset, size) for a, block, offset, size in refs]
        body = views.pop() if kind & FLAG_BODY else inline
        return pickle.loads(body, buffers=views), refs


def encode_refs(refs: list[Ref]) -> bytes:
    """The refs prefix of a ``FLAG_REFS`` payload (layout: the core's wire.rs)."""
    return _core.encode_refs(refs)


def split(payload: bytes) -> tuple[list[Ref], memoryview]:
    """Separates the refs prefix of a message payload from the pickle."""
    refs, start = _core.split_refs(payload)
    return refs, memoryview(payload)[start:]
