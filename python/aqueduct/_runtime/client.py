"""One process's side of a flow: how its ``process`` calls reach the workers
and how the results come back.

The per-task work is done by the Rust client (``aqueduct._core.Client``,
over the core's client that the HTTP server shares): classifying the task's
class, its priority and deadline, the first step whose condition holds,
pickling, keys, pushing (or keeping a task until a full queue has room),
futures, deadlines, settling results. This is its Python half, for what
involves shared memory or cloudpickle — encoding a task whose buffers go
through shared memory or whose class is pickled by value, loading such a
result, decoding worker errors — and for binding the client to the event
loop: the doorbell reader and the loop the futures belong to.
"""

from __future__ import annotations

import asyncio
import copyreg
import sys
from collections.abc import Callable
from typing import Any

from .. import _core
from .._core import CLASS_NAMED, CLASS_PLAIN, CLASS_STATE, CLASS_TIMEOUT
from .._ipc.protocol import decode_error
from .._ipc.shm import Ref, SharedMemory, set_parent_arena, split
from .._ipc.topology import Topology
from ..exceptions import FlowError, TaskSerializationError
from ..task import BaseTask
from .config import FlowConfig


def named(cls: type) -> bool:
    """True when pickle can find ``cls`` by its module and qualified name
    (not a class made inside a function)."""
    found: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is cls


def classify(cls: type) -> int:
    """How the Rust client treats tasks of ``cls`` (the core's ``CLASS_*``
    bits): ``CLASS_PLAIN`` when the finished fields can be copied into the
    caller's ``__dict__`` (BaseTask's ``update`` and plain attribute
    setting), ``CLASS_NAMED`` when pickle finds the class by name,
    ``CLASS_TIMEOUT`` when it has BaseTask's ``set_timeout``, and
    ``CLASS_STATE`` when its tasks pickle as nothing but their ``__dict__``
    (they then travel as their class's name and that dict)."""
    plain = (
        getattr(cls, "update", None) is BaseTask.update
        and getattr(cls, "__setattr__", None) is object.__setattr__
        and getattr(cls, "__dictoffset__", 0) != 0
    )
    bits = CLASS_PLAIN if plain else 0
    if named(cls):
        bits |= CLASS_NAMED
    if (
        issubclass(cls, BaseTask)
        and cls.set_timeout is BaseTask.set_timeout
        and getattr(cls, "__setattr__", None) is object.__setattr__
        and getattr(cls, "__dictoffset__", 0) != 0
    ):
        bits |= CLASS_TIMEOUT
    if bits == CLASS_PLAIN | CLASS_NAMED | CLASS_TIMEOUT and _pickles_as_its_dict(cls):
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
        topology: Topology,
        config: FlowConfig,
        spin_us: int,
        on_corrupt: Callable[[str], None],
    ) -> None:
        self.slot = slot
        self._on_corrupt = on_corrupt
        self.doorbell = topology.doorbells[slot]
        self._shm = SharedMemory(topology.arenas, own=slot)
        self._clients = topology.clients
        self.loop: asyncio.AbstractEventLoop | None = None
        steps = config.steps
        self.core = _core.Client(
            slot,
            topology.queues[: topology.steps],
            topology.result_queue(slot),
            self.doorbell,
            topology.control,
            topology.arenas[slot],
            [step.handle_condition for step in steps],
            classify,
            self,
            priorities=config.priorities,
            reject_when_full=config.reject_when_full,
            step_names=list(config.step_names),
            queue_size=config.queue_size,
            metrics_step=len(steps) if config.collects_metrics else None,
            spin_us=spin_us,
            first_batch_size=steps[0].batch_size if steps else 1,
        )

    @classmethod
    def claim(
        cls,
        topology: Topology,
        *,
        config: FlowConfig,
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
            slot=slot, topology=topology, config=config, spin_us=spin_us, on_corrupt=on_corrupt
        )
        set_parent_arena(topology.arenas[slot])
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
        self.core.fail_all(FlowError("the flow's client closed"))
        del self.core, self.doorbell
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
        loop.add_reader(self.doorbell.fd, self.core.resolve)
        self.core.resolve()

    def detach(self) -> None:
        loop, self.loop = self.loop, None
        if loop is not None and not loop.is_closed():
            try:
                loop.remove_reader(self.doorbell.fd)
            except Exception:  # the loop may be gone with its thread
                pass
        self.core.close()

    # -- called by the Rust client ---------------------------------------------------

    def encode(self, task: BaseTask, key: int, by_value: bool) -> tuple[int, bytes, list[Ref]]:
        """A task's message when its buffers go through shared memory, its
        pickle is too big for a queue or its class is pickled by value."""
        return self._shm.dumps(task, key, by_value)

    def discard(self, refs: list[Ref]) -> None:
        """Frees the blocks ``encode`` placed for a message never sent."""
        self._shm.discard(refs)

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
