"""What parent and workers agree on: message kinds, error payloads, start spec."""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

from .. import _core

# The wire constants are defined once, in the Rust core (aqueduct-core's wire.rs).
from .._core import (
    CLIENT_SHIFT,
    FLAG_BODY,
    FLAG_REFS,
    FLAGS,
    KIND_DROPPED,
    KIND_ERROR,
    KIND_STATE,
    KIND_TASK,
    KIND_TASK_BY_VALUE,
    MAX_CLIENTS,
    PICKLE_PROTOCOL,
)
from ..exceptions import (
    FlowError,
    HandlerError,
    OverloadedError,
    RequestValidationError,
    SharedMemoryFullError,
    TaskSerializationError,
    TaskTooLargeError,
    WorkerDiedError,
)

__all__ = [
    "CLIENT_SHIFT",
    "EXIT_CORRUPT_SEGMENT",
    "FLAGS",
    "FLAG_BODY",
    "FLAG_REFS",
    "KIND_DROPPED",
    "KIND_ERROR",
    "KIND_STATE",
    "KIND_TASK",
    "KIND_TASK_BY_VALUE",
    "MAX_CLIENTS",
    "PICKLE_PROTOCOL",
    "WorkerSpec",
    "decode_error",
    "decode_state",
    "encode_error",
    "resolve_class",
]


#: The exit code of a worker that found the flow's shared memory corrupt
#: (segments that fail validation): respawning it onto them cannot help.
EXIT_CORRUPT_SEGMENT = 75


def resolve_class(name: bytes) -> Any:
    """The class a ``KIND_STATE`` message names (``module``, NUL,
    ``qualname``); a worker finds classes of ``__main__`` through its own
    ``__main__``, which fetches them from the parent."""
    module_name, _, qualname = name.decode().partition("\0")
    found: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
    for part in qualname.split("."):
        found = getattr(found, part)
    if not isinstance(found, type):
        raise TypeError(f"{module_name}.{qualname} is not a class")
    return found


def decode_state(payload: bytes | memoryview) -> Any:
    """The task a ``KIND_STATE`` payload describes: an object of its class
    whose ``__dict__`` is the pickled dict (what unpickling would build)."""
    name, start = _core.split_state(bytes(payload))
    cls = resolve_class(name)
    task = cls.__new__(cls)
    task.__dict__ = _core.state_fields(bytes(payload[start:]))
    return task


@dataclass
class WorkerSpec:
    """Everything a worker needs, sent once at start."""

    step_index: int
    step_name: str
    handler_blob: bytes  # cloudpickle of the handler
    conditions_blob: bytes  # cloudpickle of every step's handle_condition
    batch_size: int
    batch_timeout: float
    latency_objective: float | None  # seconds from entering the flow (None: no objective)
    nprocs: int  # the most processes this step runs (an elastic step's max)
    queue_fds: list[int]  # input queue of every step, then a result queue per client
    doorbell_fds: list[int]  # one per client
    clients: int  # processes submitting tasks; arenas 0..clients-1 are theirs
    arena_fds: list[int]  # one per client, then one per worker process
    own_arena: int  # index of this worker's arena in arena_fds
    control_fd: int  # claims and cancel set
    slot: int  # this worker's claim slot
    parent_pid: int  # the process that started the flow: workers exit with it
    log_level: int
    spin_us: int
    sys_path: list[str]  # the parent's, so workers import what it can
    http_blob: bytes | None = None  # the HTTP server's functions per route (cloudpickle)
    continuous: bool = False  # continuous batching (see FlowStep)
    worker_index: int = 0  # among the step's workers (kept by a respawn)
    device: str | None = None  # FlowStep(devices=...)'s, for this worker
    env: dict[str, str] = field(default_factory=dict)  # set before the handler loads
    tracing: bool = False  # record when each task was handled (aqueduct.tracing)

    def inherited_fds(self) -> list[int]:
        """The parent's fds this worker maps (passed down by number)."""
        return [*self.queue_fds, *self.doorbell_fds, *self.arena_fds, self.control_fd]


def encode_error(
    step: str, exc: BaseException, kind: type[FlowError] | None = None, status: int = 500
) -> bytes:
    """Describes an exception raised in a worker so the parent can re-raise
    it. The description starts with a summary the Rust HTTP server reads:
    the HTTP ``status`` it stands for and ``{"error", "type"}``."""
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
    detail = None
    if isinstance(exc, RequestValidationError):
        detail, status = exc.detail, exc.http_status
    summary = _core.error_prefix(
        status,
        message,
        kind.__name__ if kind else type(exc).__qualname__,
        None if detail is None else json.dumps(detail, default=str),
    )
    return summary + pickle.dumps(
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
    cls.__name__: cls
    for cls in (TaskSerializationError, TaskTooLargeError, SharedMemoryFullError, OverloadedError)
}


def decode_error(payload: bytes) -> FlowError:
    """The exception a caller gets for an error message from a worker."""
    kind, step, exc_type, message, tb, original = pickle.loads(_core.error_rest(payload))
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
