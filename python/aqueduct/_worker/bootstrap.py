"""A worker's first steps, and its ``__main__``.

A worker started with ``spawn`` is a fresh interpreter: :func:`boot` reads its
spec, takes the parent's ``sys.path`` and gives the process a ``__main__`` of
its own, empty but for a module ``__getattr__``: the first time something
looks up ``__main__.<name>`` there — unpickling a task whose class the user
defined in a script, on stdin or in a notebook — the worker asks the parent
for it over its control channel and gets it pickled by value (cloudpickle),
once. From then on the name is an ordinary attribute, so tasks of ``__main__``
classes travel by reference with the C pickler, at the cost of any other
task. cloudpickle keeps a class it received several times (in the handler,
then on its own) one and the same class, so the worker's pickler finds
``__main__.<name>`` to be the very class of the objects it sends back.
"""

from __future__ import annotations

import builtins
import os
import pickle
import sys
import types
from multiprocessing.connection import Connection
from typing import Any

from .._ipc.protocol import WorkerSpec
from .channel import Channel


class _MainLookup:
    """The ``__getattr__`` of a worker's ``__main__``: fetches what is missing."""

    def __init__(self, channel: Channel, namespace: dict[str, Any]) -> None:
        self._channel = channel
        self._namespace = namespace

    def __call__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"module '__main__' has no attribute {name!r}")
        value = self._channel.definition(name)
        self._namespace.setdefault(name, value)
        return self._namespace[name]


def _fresh_main(channel: Channel) -> types.ModuleType:
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    main.__dict__["__getattr__"] = _MainLookup(channel, main.__dict__)
    return main


def boot(spec_fd: int, channel_fd: int) -> None:
    """Entry point of a worker started on a fresh interpreter."""
    with os.fdopen(spec_fd, "rb") as f:
        spec: WorkerSpec = pickle.load(f)
    sys.path[:] = spec.sys_path
    channel = Channel(Connection(channel_fd))
    sys.modules["__main__"] = _fresh_main(channel)
    from . import loop as _worker

    _worker.run(spec, channel)


def run_forked(spec: WorkerSpec, conn: Connection) -> None:
    """Entry point of a forked worker: it has the parent's ``__main__`` as it
    was at the fork; what the parent defines later is fetched as above."""
    os.environ.update(spec.env)  # modules the parent imported before the fork keep theirs
    channel = Channel(conn)
    main = sys.modules.get("__main__")
    if main is not None and "__getattr__" not in main.__dict__:
        main.__dict__["__getattr__"] = _MainLookup(channel, main.__dict__)
    from . import loop as _worker

    _worker.run(spec, channel)
