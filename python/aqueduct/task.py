"""The task base class: a container of arguments and results."""

from __future__ import annotations

import uuid
from time import monotonic
from typing import Any

__all__ = ["DEFAULT_PRIORITY", "BaseTask"]

DEFAULT_PRIORITY = 0


class BaseTask:
    """Subclass it with the fields your handlers read and set.

    The task travels to worker processes by pickle; when ``Flow.process``
    returns, the fields handlers set are copied onto the caller's object.
    """

    task_id: str = ""
    priority: int = DEFAULT_PRIORITY
    expiration_time: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.task_id = str(uuid.uuid4())
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

    def update(self, source_task: BaseTask, excluded_fields: set[str] | None = None) -> None:
        """Copies the fields of ``source_task`` onto this task, except the
        bookkeeping fields of ``BaseTask`` and ``excluded_fields``."""
        immutable = _BOOKKEEPING_FIELDS
        if excluded_fields:
            immutable = immutable | excluded_fields
        for field, value in source_task.__dict__.items():
            if field not in immutable:
                setattr(self, field, value)


_BOOKKEEPING_FIELDS = frozenset(BaseTask.__dict__)
