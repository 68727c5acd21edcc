"""A worker's end of its control channel to the parent: log records,
readiness and start failures go up; the definitions of ``__main__`` it asks
for come down (see ``bootstrap``)."""

from __future__ import annotations

import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import cloudpickle

__all__ = ["Channel"]

#: How long a worker waits for the parent to send a definition.
DEFINITION_TIMEOUT = 30.0
#: How long a name the parent did not have is not asked for again.
MISSING_TTL = 1.0


class Channel:
    """The worker's end of its control channel; any thread may send."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._send_lock = threading.Lock()
        self._request_lock = threading.RLock()
        self._missing: dict[str, tuple[float, str]] = {}

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def close(self) -> None:
        self.conn.close()

    def definition(self, name: str) -> Any:
        """``__main__.<name>`` of the parent; AttributeError if it has none."""
        missing = self._missing.get(name)
        if missing is not None and time.monotonic() - missing[0] < MISSING_TTL:
            raise AttributeError(missing[1])
        with self._request_lock:
            blob = self._ask(name)
        if isinstance(blob, str):
            self._missing[name] = (time.monotonic(), blob)
            raise AttributeError(blob)
        return cloudpickle.loads(blob)

    def _ask(self, name: str) -> bytes | str:
        try:
            self.send(("need", name))
            deadline = time.monotonic() + DEFINITION_TIMEOUT
            while self.conn.poll(max(0.0, deadline - time.monotonic())):
                match self.conn.recv():
                    case ("definition", answered, blob) if answered == name:
                        return blob  # type: ignore[no-any-return]
                    case _:
                        continue  # the late answer to a request that timed out
        except (OSError, EOFError) as exc:
            return f"__main__.{name}: the parent process is unreachable ({exc})"
        return f"__main__.{name}: the parent process did not answer in {DEFINITION_TIMEOUT} s"
