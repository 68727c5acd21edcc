"""Exceptions raised by aqueduct.

Everything derives from :class:`AqueductError`; everything a caller of
``Flow.process`` can get derives from :class:`FlowError`, as upstream.
"""

from __future__ import annotations

__all__ = [
    "AqueductError",
    "BadReferenceCount",
    "FlowError",
    "FlowStartTimeoutError",
    "HandlerError",
    "MPStartMethodValueError",
    "NotRunningError",
    "OverloadedError",
    "QueueFullError",
    "RequestValidationError",
    "SharedMemoryCorruptError",
    "SharedMemoryError",
    "SharedMemoryFullError",
    "TaskSerializationError",
    "TaskTimeoutError",
    "TaskTooLargeError",
    "WorkerDiedError",
    "WorkerStartError",
]


class AqueductError(Exception):
    """Base class for all Aqueduct errors."""


class FlowError(AqueductError):
    """Something went wrong while a flow processed a task or changed state."""


class MPStartMethodValueError(FlowError, ValueError):
    """``mp_start_method`` is not one of 'spawn', 'fork', 'forkserver'."""


class NotRunningError(FlowError):
    """The flow is not running (not started yet, stopping or stopped)."""


class BadReferenceCount(AqueductError, ValueError):
    """A shared-memory reference count went out of range."""


class TaskTimeoutError(FlowError, TimeoutError):
    """The task did not finish within its ``timeout_sec``."""


class QueueFullError(FlowError):
    """A step's queue is full and the flow is set to reject rather than wait."""


class OverloadedError(FlowError):
    """The task could no longer make its step's latency objective (the
    time it waited and what its batch is expected to cost are more than it
    had left): it was refused before any work, at once, so that the flow
    keeps serving what it can in time. Over HTTP: 429 with ``Retry-After``."""


class TaskTooLargeError(FlowError):
    """The pickled task is larger than a queue message may be."""


class TaskSerializationError(FlowError):
    """A task (or a field a handler set on it) cannot be pickled or unpickled."""


class HandlerError(FlowError):
    """A handler raised while processing the batch this task was in.

    ``exc_type`` is the qualified name of the original exception's class,
    ``exc_message`` its ``str()``, ``step`` the step name and
    ``worker_traceback`` the formatted traceback from the worker process.
    When the original exception could be pickled it is also ``__cause__``.
    """

    def __init__(
        self, step: str, exc_type: str, exc_message: str, worker_traceback: str = ""
    ) -> None:
        super().__init__(f"{step}: handler raised {exc_type}: {exc_message}")
        self.step = step
        self.exc_type = exc_type
        self.exc_message = exc_message
        self.worker_traceback = worker_traceback

    def __reduce__(self) -> tuple[type[HandlerError], tuple[str, str, str, str]]:
        """Keeps the attributes across pickling."""
        return (
            type(self),
            (self.step, self.exc_type, self.exc_message, self.worker_traceback),
        )


class FlowStartTimeoutError(FlowError, TimeoutError):
    """``start(timeout)`` passed before every handler's ``on_start`` finished."""


class WorkerStartError(FlowError):
    """A worker process failed while starting (``on_start`` raised or it died)."""


class WorkerDiedError(FlowError):
    """The worker process handling the task died (killed, crashed); the
    message names the step and the signal or exit code."""


class SharedMemoryError(AqueductError, OSError):
    """Creating or mapping shared memory failed."""


class SharedMemoryCorruptError(FlowError, SharedMemoryError):
    """The flow's shared memory holds what none of its processes writes: a
    worker's native code scribbled on it. The tasks in flight fail with this
    error; the flow retires that memory and restarts on fresh segments (see
    README, "Isolation")."""


class SharedMemoryFullError(FlowError):
    """A buffer of the task does not fit in the shared-memory arena (larger
    than ``Flow(shm_size=...)``, or the arena is full right now). The message
    gives the buffer's size and the arena's capacity and free space."""


class RequestValidationError(AqueductError, ValueError):
    """An HTTP request's body does not fit its route's ``request_model``:
    answered 422 with the field errors (``detail``: a list of
    ``{"loc", "msg", "type"}``, as pydantic reports them)."""

    http_status = 422

    def __init__(self, message: str, detail: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.detail = detail

    def __reduce__(
        self,
    ) -> tuple[type[RequestValidationError], tuple[str, list[dict[str, object]]]]:
        return (type(self), (str(self), self.detail))
