"""One process's side of a flow: how its ``process`` calls reach the workers
and how the results come back.

The per-task work is done by the Rust client (``aqueduct._core.Client``):
pickling, keys, pushing, futures, deadlines, settling results. This is its
Python half, for what is rare or big: tasks whose buffers go through shared
memory (and the blocks they hold), task classes with their own ``update``,
``__setattr__`` or ``set_timeout``, a task no step's condition selects at
first sight, a full queue (a backlog in arrival order, or ``QueueFullError``),
and decoding worker errors. It also binds the client to the event loop: the
doorbell reader and the loop the futures belong to.
"""

from __future__ import annotations

import asyncio
import collections
import copyreg
import sys
from collections.abc import Callable
from typing import Any

from . import _core
from ._protocol import decode_error
from ._shm import SharedMemory, _set_parent_arena, split
from ._topology import Topology
from .exceptions import FlowError, QueueFullError, TaskSerializationError
from .step import FlowStep
from .task import BaseTask

#: ``_core.Client`` class bits (see ``classify``).
CLASS_FAST = _core.CLASS_FAST
CLASS_PLAIN = 2
CLASS_STATE = _core.CLASS_STATE

#: A task waiting in a backlog: its future and its message.
Entry = tuple["asyncio.Future[Any]", _core.Message]


def named(cls: type) -> bool:
    """True when pickle can find ``cls`` by its module and qualified name
    (not a class made inside a function)."""
    found: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is cls


def classify(cls: type) -> int:
    """How the Rust client treats tasks of ``cls``: ``CLASS_PLAIN`` when the
    finished fields can be copied into the caller's ``__dict__`` (BaseTask's
    ``update`` and plain attribute setting), ``CLASS_FAST`` when, on top of
    that, the whole submission can stay in Rust, and ``CLASS_STATE`` when
    its tasks pickle as nothing but their ``__dict__`` (they then travel as
    their class's name and that dict)."""
    plain = (
        getattr(cls, "update", None) is BaseTask.update
        and getattr(cls, "__setattr__", None) is object.__setattr__
        and getattr(cls, "__dictoffset__", 0) != 0
    )
    fast = (
        plain
        and issubclass(cls, BaseTask)
        and cls.set_timeout is BaseTask.set_timeout
        and named(cls)
    )
    bits = (CLASS_PLAIN if plain else 0) | (CLASS_FAST if fast else 0)
    if fast and _pickles_as_its_dict(cls):
        bits |= CLASS_STATE
    return bits


def _pickles_as_its_dict(cls: type) -> bool:
    """True when pickle would rebuild ``cls``'s objects as ``cls.__new__(cls)``
    plus their ``__dict__``: nothing customises how they are reduced."""
    custom = ("__getnewargs_ex__", "__getnewargs__", "__setstate__")
    return (
        cls.__reduce_ex__ is object.__reduce_ex__  # type: ignore[comparison-overlap]
        and cls.__reduce__ is object.__reduce__  # type: ignore[comparison-overlap]
        and getattr(cls, "__getstate__", None) is getattr(object, "__getstate__", None)
        and getattr(cls, "__new__", None) is object.__new__
        and not any(hasattr(cls, name) for name in custom)
        and cls not in copyreg.dispatch_table
        and all("__slots__" not in vars(base) for base in cls.__mro__)
    )


class Client:
    """This process's client slot of a flow: its result queue, doorbell and
    arena, and the Rust client that does the per-task work."""

    def __init__(
        self,
        *,
        slot: int,
        steps: list[FlowStep],
        step_names: list[str],
        topology: Topology,
        priorities: int,
        reject_when_full: bool,
        queue_size: int | None,
        metrics: bool,
        spin_us: int,
        on_corrupt: Callable[[str], None],
    ) -> None:
        self.slot = slot
        self._on_corrupt = on_corrupt
        self._steps = steps
        self._step_names = step_names
        self._queues = topology.queues[: topology.steps]
        self._results = topology.result_queue(slot)
        self.doorbell = topology.doorbells[slot]
        self._arena = topology.arenas[slot]
        self._shm = SharedMemory(topology.arenas, own=slot)
        self._priorities = priorities
        self._reject_when_full = reject_when_full
        self._queue_size = queue_size
        self._clients = topology.clients
        self._held: dict[int, list[int]] = {}
        self._backlogs: dict[int, collections.deque[Entry]] = {}
        self._classes: dict[type, int] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.core = _core.Client(
            slot,
            self._queues,
            self._results,
            self.doorbell,
            topology.control,
            priorities,
            steps[0].handle_condition if steps else _no_step,
            classify,
            self,
            len(steps) if metrics else None,
            spin_us,
            steps[0].batch_size if steps else 1,
        )

    @classmethod
    def claim(
        cls,
        topology: Topology,
        *,
        steps: list[FlowStep],
        step_names: list[str],
        priorities: int,
        reject_when_full: bool,
        queue_size: int | None,
        metrics: bool,
        spin_us: int,
        on_corrupt: Callable[[str], None],
        slot: int | None = None,
    ) -> Client:
        """Takes a free client slot of the flow for this process (or ``slot``,
        the one it had on the segments the flow left); its arena becomes the
        one ``share_value`` allocates in."""
        if slot is None:
            slot = topology.control.claim_client()
        if slot >= topology.clients:
            raise FlowError(
                f"more processes submit tasks than Flow(clients={topology.clients}) allows"
            )
        client = cls(
            slot=slot,
            steps=steps,
            step_names=step_names,
            topology=topology,
            priorities=priorities,
            reject_when_full=reject_when_full,
            queue_size=queue_size,
            metrics=metrics,
            spin_us=spin_us,
            on_corrupt=on_corrupt,
        )
        _set_parent_arena(topology.arenas[slot])
        return client

    def close(self) -> dict[str, int]:
        """Ends the client (the flow stopped): its loop reader goes, the
        blocks its tasks held are released (the workers that used them are
        gone). Returns how its tasks ended. The Rust client and this object
        refer to each other, and a closed client may still be referred to
        (by the frames of a call's traceback, until a garbage collection):
        it lets go of every segment here, so they are unmapped now."""
        counts = self.core.counts()
        self.detach()
        self.release_all()
        del self.core, self._queues, self._results, self.doorbell, self._arena
        self._backlogs.clear()
        self._shm.close()
        return counts

    def fail_all_threadsafe(self, error: BaseException) -> None:
        """From any thread: every task this client waits for fails."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.core.fail_all, error)

    # -- the event loop ---------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Makes ``loop`` the one this client's futures and doorbell use."""
        self.detach()
        self.loop = loop
        self.core.attach(loop)
        loop.add_reader(self.doorbell.fd, self.on_doorbell)
        self.on_doorbell()

    def detach(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None and not loop.is_closed():
            try:
                loop.remove_reader(self.doorbell.fd)
            except Exception:  # the loop may be gone with its thread
                pass
        self.core.close()

    def on_doorbell(self) -> None:
        """The doorbell rang: settles every ready result, then sends what
        waits in backlogs while there is room."""
        self.core.resolve()
        if self._backlogs:
            self._flush_backlogs()

    # -- the Python path of submitting --------------------------------------------

    def submit(self, task: BaseTask, timeout_sec: float) -> asyncio.Future[Any] | None:
        """Sends a task the Rust client left to Python; returns its future,
        or None when no step's condition holds for it."""
        priority = task.priority
        if priority != 0 or self._priorities > 1:
            priority = task.priority = max(0, min(int(priority), self._priorities - 1))
        task.set_timeout(timeout_sec)
        first = self._first_step(task)
        if first == len(self._steps):
            return None
        key = self.core.new_key()
        cls = type(task)
        bits = self._classes.get(cls)
        if bits is None:
            bits = self._classes[cls] = classify(cls)
        kind, payload, refs = self._shm.dumps(task, key, by_value=not named(cls))
        if refs:
            self._hold(key, refs)
        deadline_ns = int(task.expiration_time * 1e9)  # type: ignore[operator]
        future = self.core.register(key, task, timeout_sec, bool(bits & CLASS_PLAIN))
        try:
            message = _core.Message(
                key=key, kind=kind, payload=payload, priority=priority, deadline_ns=deadline_ns
            )
            self._submit(first, (future, message))
        except BaseException:
            self._release(key)
            self.core.forget(key)
            raise
        return future

    def _first_step(self, task: BaseTask) -> int:
        """Index of the first step whose condition holds for ``task``."""
        for index, step in enumerate(self._steps):
            if step.handle_condition(task):
                return index
        return len(self._steps)

    def _submit(self, index: int, entry: Entry) -> None:
        """Pushes a task into step ``index``'s queue, or queues it in arrival
        order until a worker frees room (the doorbell rings then)."""
        backlog = self._backlogs.get(index)
        if backlog:
            backlog.append(entry)
            return
        queue = self._queues[index]
        if _try_push(queue, entry[1], self.slot):
            queue.notify()
        elif self._reject_when_full:
            raise QueueFullError(
                f"the queue of {self._step_names[index]} is full "
                f"({self._queue_size or 'its ring'} tasks)"
            )
        else:
            self._backlogs.setdefault(index, collections.deque()).append(entry)
            self.core.set_backlogged(index, True)

    def _flush_backlogs(self) -> None:
        for index, backlog in list(self._backlogs.items()):
            queue = self._queues[index]
            pushed = False
            while backlog:
                future, message = backlog[0]
                key = message.key
                if future.done():
                    self._release(key)  # timed out while waiting: never sent
                else:
                    try:
                        if not _try_push(queue, message, self.slot):
                            break
                        pushed = True
                    except Exception as exc:
                        self._release(key)
                        self.core.forget(key)
                        future.set_exception(exc)
                backlog.popleft()
            if pushed:
                queue.notify()
            if not backlog:
                del self._backlogs[index]
                self.core.set_backlogged(index, False)

    # -- shared memory held by tasks in flight ---------------------------------------

    def _hold(self, key: int, refs: list[tuple[int, int, int, int]]) -> None:
        """Blocks of this process's arena stay allocated while task ``key``
        is in flight (until its result, error or drop notice comes back)."""
        held = [block for index, block, _offset, _size in refs if index == self.slot]
        for block in held:
            self._arena.retain(block)
        if held:
            self._held[key] = held
            self.core.hold(key)

    def _release(self, key: int) -> None:
        held = self._held.pop(key, None)
        if held:
            self.core.unhold(key)
            for block in held:
                self._arena.release(block)

    def release_all(self) -> None:
        """The workers that used the blocks are gone."""
        for key in list(self._held):
            self._release(key)

    # -- called by the Rust client ---------------------------------------------------

    def result(self, kind: int, payload: bytes) -> Any:
        """A finished task whose message refers to shared memory (or that the
        fast path could not unpickle: this says why)."""
        try:
            finished, _refs = self._shm.loads(kind, payload)
        except Exception as exc:
            raise TaskSerializationError(f"cannot unpickle the finished task: {exc}") from exc
        return finished

    def error(self, payload: bytes) -> BaseException:
        return decode_error(payload)

    def release(self, key: int) -> None:
        self._release(key)

    def unwanted(self, payload: bytes) -> None:
        """Frees the workers' blocks of a result nobody waits for any more."""
        try:
            refs, _body = split(payload)
        except Exception:  # scribbled on: it names no block worth trusting
            return
        arenas = self._shm.arenas
        for index, block, _offset, _size in refs:
            if self._clients <= index < len(arenas):
                arenas[index].free(block)

    def corrupt(self, reason: str) -> None:
        """The result queue holds what no process writes: the flow is told
        (it fails what waits and retires its shared memory)."""
        self._on_corrupt(reason)


def _no_step(task: Any) -> bool:
    return False


def _try_push(queue: _core.Queue, message: _core.Message, client: int) -> bool:
    """Pushes a message; False when the queue is full, after asking its
    consumers to ring the doorbell once they free room (and retrying once,
    in case they just did)."""
    if queue.try_push(message):
        return True
    queue.want_space(client)
    return queue.try_push(message)
