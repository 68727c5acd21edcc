"""What parent and workers agree on: message kinds, error payloads, start spec."""

from __future__ import annotations

import pickle
import traceback
from dataclasses import dataclass

from .exceptions import (
    FlowError,
    HandlerError,
    SharedMemoryFullError,
    TaskSerializationError,
    TaskTooLargeError,
    WorkerDiedError,
)

# Message kinds (the `kind` field of a queue message header).
KIND_TASK = 0
KIND_ERROR = 1
#: A task pickled by cloudpickle, its class by value: its class cannot be
#: imported by name in workers (defined in a notebook, in exec'd code...).
KIND_TASK_BY_VALUE = 2
#: A worker dropped the task (its deadline passed); tells the parent that
#: no process uses the task's shared-memory blocks any more.
KIND_DROPPED = 3
#: Bits of a task key above this one name the client that submitted it.
CLIENT_SHIFT = 48

#: Flag: the payload starts with shared-memory references (see _shm.split).
FLAG_REFS = 0x100
#: Flag (with FLAG_REFS): the last reference is the pickle itself.
FLAG_BODY = 0x200
FLAGS = FLAG_REFS | FLAG_BODY

PICKLE_PROTOCOL = 5


@dataclass
class WorkerSpec:
    """Everything a worker needs, sent once at start."""

    step_index: int
    step_name: str
    handler_blob: bytes  # cloudpickle of the handler
    conditions_blob: bytes  # cloudpickle of every step's handle_condition
    batch_size: int
    batch_timeout: float
    nprocs: int  # processes of this step
    queue_fds: list[int]  # input queue of every step, then a result queue per client
    doorbell_fds: list[int]  # one per client
    clients: int  # processes submitting tasks; arenas 0..clients-1 are theirs
    arena_fds: list[int]  # one per client, then one per worker process
    own_arena: int  # index of this worker's arena in arena_fds
    control_fd: int  # claims and cancel set
    slot: int  # this worker's claim slot
    metrics: bool  # record handle times
    parent_pid: int  # the process that started the flow: workers exit with it
    log_level: int
    spin_us: int
    sys_path: list[str]  # the parent's, so workers import what it can

    def inherited_fds(self) -> list[int]:
        """The parent's fds this worker maps (passed down by number)."""
        return [*self.queue_fds, *self.doorbell_fds, *self.arena_fds, self.control_fd]


def encode_error(step: str, exc: BaseException, kind: type[FlowError] | None = None) -> bytes:
    """Describes an exception raised in a worker so the parent can re-raise it."""
    original: bytes | None
    try:
        original = pickle.dumps(exc, protocol=PICKLE_PROTOCOL)
        pickle.loads(original)  # only an exception that comes back travels
    except Exception:
        original = None
    try:
        message = str(exc)
    except Exception:
        message = f"<{type(exc).__name__} whose str() failed>"
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception:
        text = ""
    return pickle.dumps(
        (
            kind.__name__ if kind else None,
            step,
            type(exc).__qualname__,
            message,
            text,
            original,
        ),
        protocol=PICKLE_PROTOCOL,
    )


_ERROR_KINDS: dict[str, type[FlowError]] = {
    cls.__name__: cls for cls in (TaskSerializationError, TaskTooLargeError, SharedMemoryFullError)
}


def decode_error(payload: bytes) -> FlowError:
    """The exception a caller gets for an error message from a worker."""
    kind, step, exc_type, message, tb, original = pickle.loads(payload)
    if kind == WorkerDiedError.__name__:
        err: FlowError = WorkerDiedError(message)
    elif kind in _ERROR_KINDS:
        err = _ERROR_KINDS[kind](f"{step}: {exc_type}: {message}")
    else:
        err = HandlerError(step, exc_type, message, tb)
    if original is not None:
        try:
            err.__cause__ = pickle.loads(original)
        except Exception:
            pass
    return err
