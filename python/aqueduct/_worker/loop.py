"""The worker process: runs one step's handler over batches from its queue."""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any

import cloudpickle

from .. import _core, tracing
from .._ipc import handling, identity
from .._ipc.http_messages import Request, Response
from .._ipc.protocol import (
    EXIT_CORRUPT_SEGMENT,
    FLAG_REFS,
    KIND_DROPPED,
    WorkerSpec,
    encode_error,
    resolve_class,
)
from .._ipc.shm import Ref, SharedMemory, split
from .._ipc.topology import Topology
from ..exceptions import (
    FlowError,
    OverloadedError,
    SharedMemoryError,
    SharedMemoryFullError,
    TaskSerializationError,
    TaskTooLargeError,
)
from ..logger import log
from .channel import Channel

# How long a worker sleeps with nothing to do before it looks around again.
IDLE_TIMEOUT = 1.0

# How many batches a lone worker may take from its queue at once (see _Worker).
BURST = 16


class _ChannelLogHandler(logging.Handler):
    """Forwards log records to the parent, which hands them to ``log``."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = dict(record.__dict__)
            fields["msg"] = record.getMessage()
            fields["args"] = None
            if record.exc_info:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            fields["exc_info"] = None
            self._channel.send(("log", fields))
        except Exception:
            self.handleError(record)


def run(spec: WorkerSpec, channel: Channel) -> None:
    """Runs a worker process: its handler's ``on_start``, then its loop."""
    # The parent decides when workers stop: Ctrl-C in a terminal reaches the
    # whole process group, and the parent's shutdown closes our queue.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log.handlers = [_ChannelLogHandler(channel)]
    log.propagate = False
    log.setLevel(spec.log_level)
    identity.set_current(
        identity.WorkerInfo(spec.step_name, spec.worker_index, spec.nprocs, spec.device)
    )
    try:
        handler = cloudpickle.loads(spec.handler_blob)
        conditions = cloudpickle.loads(spec.conditions_blob)
        handler.on_start()
    except BaseException:
        channel.send(("failed", traceback.format_exc()))
        channel.close()
        sys.exit(1)
    _exit_with_parent(spec.parent_pid)
    channel.send(("ready", os.getpid()))
    try:
        _Worker(spec, handler, conditions).loop()
    except SharedMemoryError as exc:
        # mapping it, or reading it later: a respawn is what heals, not a retry
        log.error("[%s] %s; the worker exits", spec.step_name, exc)
        os._exit(EXIT_CORRUPT_SEGMENT)


def _exit_with_parent(parent_pid: int) -> None:
    """Ends this worker when the parent process dies, however it dies.

    A pidfd on the parent becomes readable when it exits — SIGKILL included —
    whoever else holds its file descriptors (web servers forked from the
    parent inherit every pipe it has, so a pipe's EOF is not enough).
    """
    try:
        pidfd = os.pidfd_open(parent_pid)
    except OSError:
        os._exit(70)  # already gone
    if select.select([pidfd], [], [], 0)[0]:
        os._exit(70)  # it exited before we watched it

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(70)

    threading.Thread(target=watch, name="aqueduct-parent-watch", daemon=True).start()


class _Worker:
    """A worker's loop over its step's batches. The per-task work (loading,
    routing, encoding, pushing, HTTP requests and responses) is done by the
    Rust ``StepWorker``; this class is its Python half for what involves
    shared memory or tasks pickled by value, and error reports."""

    #: Errors that reach the caller as themselves (not as a HandlerError).
    PASSED_ON = (
        TaskTooLargeError,
        TaskSerializationError,
        SharedMemoryFullError,
        OverloadedError,
    )

    def __init__(self, spec: WorkerSpec, handler: Any, conditions: list[Any]) -> None:
        self.step_name = spec.step_name
        self.handler = handler
        self.topology = topology = Topology.open(
            queue_fds=spec.queue_fds,
            doorbell_fds=spec.doorbell_fds,
            control_fd=spec.control_fd,
            arena_fds=spec.arena_fds,
            own_arena=spec.own_arena,
            spin=spec.spin_us,
        )
        self.shm = SharedMemory(topology.arenas, own=spec.own_arena)
        # tasks from the HTTP server: made from requests, answered with responses
        http = None
        if spec.http_blob:
            routes = cloudpickle.loads(spec.http_blob)
            if spec.tracing:
                routes = [tracing.traced_route(ends) for ends in routes]
            http = (routes, Request, Response, topology.arenas, spec.own_arena)
        # A step's only process, batching without a timeout, takes up to
        # BURST batches one after the other after one wait, and wakes the
        # next consumers once for all of them. With siblings, each takes one
        # batch per wait, so none is left idle while another works through a
        # backlog.
        waits = spec.batch_timeout > 0 or spec.latency_objective is not None
        burst = BURST if spec.nprocs == 1 and not waits else 1
        self.engine = _core.StepWorker(
            spec.step_index,
            spec.slot,
            topology.queues,
            topology.doorbells,
            topology.control,
            conditions,
            self,
            spec.batch_size,
            spec.batch_timeout,
            burst,
            http,
            spec.continuous,
            spec.latency_objective,
        )
        self.continuous = spec.continuous
        self.step_index = spec.step_index
        self.tracing = spec.tracing
        handling.bind(self.engine)
        # the fds were duplicated by `open`; the inherited ones are not needed
        for fd in spec.inherited_fds():
            try:
                os.close(fd)
            except OSError:
                pass

    def loop(self) -> None:
        log.debug("[%s] worker %d ready", self.step_name, os.getpid())
        if self.continuous:
            self._continuous_loop()
        else:
            self._batch_loop()
        log.debug("[%s] worker %d exits", self.step_name, os.getpid())

    def _batch_loop(self) -> None:
        engine = self.engine
        handle = self.handler.handle
        clock = time.monotonic_ns
        traced, step = self.tracing, self.step_index
        while True:
            ready = engine.next(IDLE_TIMEOUT)
            if ready is None:
                break  # queue closed and drained: the flow is stopping
            while tasks := engine.batch():
                started = clock()
                try:
                    handle(*tasks)
                except BaseException as exc:  # whatever the handler raises fails its batch only
                    log.exception(
                        "[%s] handler raised on a batch of %d", self.step_name, len(tasks)
                    )
                    engine.fail(encode_error(self.step_name, exc))
                    continue
                ended = clock()
                if traced:
                    tracing.record(tasks, step, started, ended)
                engine.forward(ended - started)
            engine.flush()  # one wake-up per burst for each queue fed

    def _continuous_loop(self) -> None:
        """One ``handle`` call per iteration over the active set (see
        ``FlowStep``): tasks join it between iterations, finished ones leave
        it at once, and a raise fails the whole set."""
        engine = self.engine
        handle = self.handler.handle
        clock = time.monotonic_ns
        traced, step = self.tracing, self.step_index
        while (tasks := engine.active(IDLE_TIMEOUT)) is not None:
            if not tasks:
                continue
            started = clock()
            try:
                handle(*tasks)
            except BaseException as exc:  # fails the tasks in hand only
                log.exception("[%s] handler raised on %d active tasks", self.step_name, len(tasks))
                engine.fail(encode_error(self.step_name, exc))
            else:
                ended = clock()
                if traced:
                    tracing.record(tasks, step, started, ended)
                engine.forward(ended - started)
            engine.flush()

    # -- the Python half, called by the StepWorker ----------------------------------

    def load(self, message: _core.Message) -> tuple[Any, list[Ref]] | bytes:
        """A task whose message refers to shared memory or was pickled by
        value; when it cannot be loaded, the error report for its client."""
        try:
            return self.shm.loads(message.kind, message.payload)
        except Exception as exc:
            if message.kind & FLAG_REFS:
                self.retire(split(message.payload)[0], [])
            return encode_error(self.step_name, exc, TaskSerializationError)

    def encode(self, task: Any, key: int, by_value: bool) -> tuple[int, bytes, list[Ref]]:
        """A handled task's message when it takes shared memory or its class
        is pickled by value (or the fast path could not pickle it: this
        raises why)."""
        return self.shm.dumps(task, key, by_value)

    def encode_part(self, part: Any, key: int) -> tuple[int, bytes, list[Ref]]:
        """A streamed part's message when it takes shared memory (or only
        cloudpickle can pickle it)."""
        return self.shm.dumps_part(part, key)

    def discard(self, refs: list[Ref]) -> None:
        """Frees the blocks ``encode`` placed for a message never sent."""
        self.shm.discard(refs)

    def report(self, exc: BaseException, status: int) -> bytes:
        """The error report of ``exc`` for a task's client, with the HTTP
        ``status`` it stands for; errors of the kinds in ``PASSED_ON``
        reach the caller as themselves."""
        passes = type(exc) if isinstance(exc, self.PASSED_ON) else None
        if status == 400 and not isinstance(exc, FlowError):
            log.debug("[%s] a request was refused: %s", self.step_name, exc)
        return encode_error(self.step_name, exc, passes, status)

    def resolve(self, name: bytes) -> Any:
        """The class a ``KIND_STATE`` message names."""
        return resolve_class(name)

    def retire(self, incoming: list[Ref], kept: list[Ref]) -> None:
        """Frees blocks of workers' arenas a task referred to and no longer
        does (``kept``: what it was sent on with). The clients' arenas are
        theirs to free."""
        if not incoming:
            return
        keep = {(arena, block) for arena, block, _offset, _size in kept}
        for arena, block, _offset, _size in incoming:
            if arena >= self.topology.clients and (arena, block) not in keep:
                self.shm.arenas[arena].free(block)

    def drop(self, expired: list[_core.Message]) -> None:
        """Expired and cancelled tasks are not handled; their blocks are
        released, and a client whose blocks they held is told."""
        told: set[int] = set()
        for message in expired:
            refs, _body = split(message.payload)
            self.retire(refs, [])
            if any(arena < self.topology.clients for arena, *_rest in refs):
                index = self.topology.results_index(message.key)
                notice = _core.Message(
                    key=message.key, kind=KIND_DROPPED, payload=b"", priority=message.priority
                )
                self.topology.queues[index].push_waiting(notice)
                told.add(index)
        for index in told:
            self.topology.notify(index)
