"""Starting a worker process, as the parent sees it.

``spawn`` (the default) and ``forkserver`` start a fresh interpreter on
aqueduct's own entry point (:mod:`aqueduct._worker.bootstrap`), never on the user's
script: multiprocessing's spawn re-runs the parent's ``__main__`` in every
worker, so a script without an ``if __name__ == "__main__":`` guard starts
flows recursively, code piped to ``python -`` cannot be re-run at all, and a
model loaded at module level is loaded once more per worker. The worker gets
the parent's ``sys.path``, working directory and interpreter flags; its fds
(queues, arenas, control block) are passed down by number; its
:class:`~aqueduct._ipc.protocol.WorkerSpec` travels in a memfd, so starting a
worker never blocks on a pipe, whatever the size of the handler.
``fork`` forks, as upstream did.

Each worker gets one end of a socket pair, its control channel: it sends log
records, readiness and start failures, and asks for the definitions of
``__main__`` it meets (see :mod:`aqueduct._worker.bootstrap`); the parent answers.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.spawn
import os
import pickle
import signal
import socket
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Protocol

import cloudpickle

from .._ipc.protocol import PICKLE_PROTOCOL, WorkerSpec

#: Where the worker's interpreter finds the aqueduct package that started it.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The worker's whole command line after the interpreter's flags: argv[1] is
#: the package root, argv[2] the spec's fd, argv[3] the control channel's fd.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from aqueduct._worker.bootstrap import boot; boot(int(sys.argv[2]), int(sys.argv[3]))"
)


class WorkerHandle(Protocol):
    """What the supervisor needs of a worker process: a forked
    ``multiprocessing.Process`` or a :class:`ChildProcess`."""

    @property
    def pid(self) -> int | None: ...
    @property
    def sentinel(self) -> int: ...
    @property
    def exitcode(self) -> int | None: ...
    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...
    def close(self) -> None: ...


class ChildProcess:
    """A worker started on aqueduct's entry point, with the part of
    ``multiprocessing.Process``'s interface the supervisor uses."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        # Readable once the process has exited, for multiprocessing's wait().
        # The child is not reaped before we wait for it, so its pid stays ours.
        self.sentinel = os.pidfd_open(popen.pid)

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self._popen.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Releases the pidfd once the process is reaped."""
        if self.sentinel >= 0 and self._popen.poll() is not None:
            os.close(self.sentinel)
            self.sentinel = -1


def launch(method: str, spec: WorkerSpec, name: str) -> tuple[WorkerHandle, Connection]:
    """Starts one worker; returns its process and the parent's end of its
    control channel."""
    parent_end, child_end = socket.socketpair()
    conn = Connection(parent_end.detach())
    child_conn = Connection(child_end.detach())
    try:
        if method == "fork":
            from .._worker import bootstrap as _bootstrap

            forked = multiprocessing.get_context("fork").Process(
                target=_bootstrap.run_forked, args=(spec, child_conn), name=name, daemon=True
            )
            forked.start()
            process: WorkerHandle = forked
        else:
            process = _start_interpreter(spec, child_conn.fileno())
    except BaseException:
        conn.close()
        raise
    finally:
        child_conn.close()
    return process, conn


def _start_interpreter(spec: WorkerSpec, channel_fd: int) -> ChildProcess:
    spec_fd = os.memfd_create("aqueduct-spec", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(spec_fd), "wb") as f:
            pickle.dump(spec, f, protocol=PICKLE_PROTOCOL)
        os.lseek(spec_fd, 0, os.SEEK_SET)
        command = [
            multiprocessing.spawn.get_executable(),
            *subprocess._args_from_interpreter_flags(),  # type: ignore[attr-defined]
            "-P",  # the working directory is not put in front of sys.path
            "-c",
            _BOOT,
            _PACKAGE_ROOT,
            str(spec_fd),
            str(channel_fd),
        ]
        popen = subprocess.Popen(
            command,
            pass_fds=[*spec.inherited_fds(), spec_fd, channel_fd],
            stdin=subprocess.DEVNULL,
            env={**os.environ, **spec.env},  # before anything is imported
        )
    finally:
        os.close(spec_fd)
    return ChildProcess(popen)


def definition(name: str) -> bytes | str:
    """What a worker asking for ``__main__.<name>`` gets: the object pickled
    by value, or why it cannot have it."""
    main = sys.modules.get("__main__")
    missing = object()
    value = getattr(main, name, missing) if main is not None else missing
    if value is missing:
        return f"module '__main__' has no attribute {name!r}"
    try:
        sent: bytes = cloudpickle.dumps(value, protocol=PICKLE_PROTOCOL)
        return sent
    except Exception as exc:
        return f"__main__.{name} cannot be sent to workers: {type(exc).__name__}: {exc}"
