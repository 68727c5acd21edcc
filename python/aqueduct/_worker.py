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
from collections.abc import Iterable
from typing import Any

import cloudpickle

from . import _core
from ._bootstrap import Channel
from ._core import FLAG_HTTP, HTTP_ROUTE_MASK, KIND_HTTP_REQUEST, KIND_HTTP_RESPONSE
from ._http_task import HttpEnds
from ._protocol import (
    EXIT_CORRUPT_SEGMENT,
    FLAG_REFS,
    FLAGS,
    KIND_DROPPED,
    KIND_ERROR,
    KIND_TASK_BY_VALUE,
    WorkerSpec,
    encode_error,
    resolve_class,
)
from ._shm import Ref, SharedMemory, split
from ._topology import Topology
from .exceptions import (
    FlowError,
    SharedMemoryCorruptError,
    SharedMemoryError,
    SharedMemoryFullError,
    TaskSerializationError,
    TaskTooLargeError,
)
from .logger import log

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
    """A worker's loop over its step's batches. The per-task work (unpickling,
    routing, pickling, pushing) is done by the Rust ``StepWorker``; this
    class is its Python half for what involves shared memory, tasks pickled
    by value, and errors."""

    def __init__(self, spec: WorkerSpec, handler: Any, conditions: list[Any]) -> None:
        self.step_index = spec.step_index
        self.step_name = spec.step_name
        self.handler = handler
        # (index, condition) of the steps after this one, for routing
        self.later_conditions = list(enumerate(conditions))[spec.step_index + 1 :]
        self.own_condition = conditions[spec.step_index]
        # tasks from the HTTP server: made from requests, answered with responses
        self.http = HttpEnds(cloudpickle.loads(spec.http_blob)) if spec.http_blob else None
        self.topology = topology = Topology.open(
            queue_fds=spec.queue_fds,
            doorbell_fds=spec.doorbell_fds,
            control_fd=spec.control_fd,
            arena_fds=spec.arena_fds,
            own_arena=spec.own_arena,
            spin=spec.spin_us,
        )
        self.shm = SharedMemory(topology.arenas, own=spec.own_arena)
        # A step's only process, batching without a timeout, takes up to
        # BURST batches one after the other after one wait, and wakes the
        # next consumers once for all of them. With siblings, each takes one
        # batch per wait, so none is left idle while another works through a
        # backlog.
        burst = BURST if spec.nprocs == 1 and spec.batch_timeout == 0 else 1
        self.engine = _core.StepWorker(
            spec.step_index,
            spec.slot,
            topology.queues,
            topology.doorbells,
            topology.control,
            self.later_conditions,
            self,
            spec.batch_size,
            spec.batch_timeout,
            burst,
        )
        # the fds were duplicated by `open`; the inherited ones are not needed
        for fd in spec.inherited_fds():
            try:
                os.close(fd)
            except OSError:
                pass

    def loop(self) -> None:
        log.debug("[%s] worker %d ready", self.step_name, os.getpid())
        engine = self.engine
        handle = self.handler.handle
        clock = time.perf_counter_ns
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
                engine.forward(clock() - started)
            engine.flush()  # one wake-up per burst for each queue fed
        log.debug("[%s] worker %d exits", self.step_name, os.getpid())

    # -- the Python half, called by the StepWorker ----------------------------------

    def load(self, message: _core.Message) -> tuple[Any, list[Ref]] | int:
        """A task whose message refers to shared memory or was pickled by
        value; when it cannot be loaded, its client is told why and the index
        of the queue that went to is returned."""
        if message.kind & ~FLAGS == KIND_HTTP_REQUEST:
            return self._load_request(message)
        try:
            return self.shm.loads(message.kind, message.payload)
        except Exception as exc:
            if message.kind & FLAG_REFS:
                self._retire(split(message.payload)[0], ())
            self._send_error(message.key, message.priority, exc, TaskSerializationError)
            return self.topology.results_index(message.key)

    def _load_request(self, message: _core.Message) -> tuple[Any, list[Ref]] | int:
        """A task made from an HTTP request (a 400 for the server when
        ``task_from_request`` raises); one this step's condition declines
        goes on without its handler."""
        try:
            if self.http is None:
                raise FlowError("the flow was not started by aqueduct.http.serve")
            task = self.http.task(message.payload, message.kind, self.shm.arenas)
        except Exception as exc:
            self._send_error(message.key, message.priority, exc, status=400)
            return self.topology.results_index(message.key)
        if not self.own_condition(task):
            key, kind, priority = message.key, message.kind, message.priority
            return self.forward(task, key, kind, priority, message.deadline_ns, [])
        return task, []

    def resolve(self, name: bytes) -> Any:
        """The class a ``KIND_STATE`` message names."""
        return resolve_class(name)

    def retire(self, refs: list[Ref]) -> None:
        """A task that failed no longer needs its blocks."""
        self._retire(refs, ())

    def _next_queue(self, task: Any, key: int) -> int:
        """Index of the next step whose condition holds, or of the result queue."""
        for index, condition in self.later_conditions:
            if condition(task):
                return index
        return self.topology.results_index(key)

    def forward(
        self, task: Any, key: int, kind: int, priority: int, deadline_ns: int, refs: list[Ref]
    ) -> int:
        """Sends a handled task on; returns the index of the queue it went to."""
        out: list[Ref] = []
        http = kind & (FLAG_HTTP | HTTP_ROUTE_MASK) if kind & FLAG_HTTP else 0
        try:
            index = self._next_queue(task, key)
            if http and index >= self.topology.steps and self.http is not None:
                kind, payload = KIND_HTTP_RESPONSE, self.http.response(task, kind)
            else:
                by_value = kind & ~FLAGS == KIND_TASK_BY_VALUE
                kind, payload, out = self.shm.dumps(task, key, by_value)
                kind |= http
            self._push(
                index,
                _core.Message(
                    key=key, kind=kind, payload=payload, priority=priority, deadline_ns=deadline_ns
                ),
            )
        except SharedMemoryCorruptError:
            raise  # the worker stops (see run): its tasks are failed by the parent
        except Exception as exc:
            self._retire(refs, ())
            self.shm.discard(out)
            # errors of these kinds reach the caller as themselves
            passes: type[FlowError] | None = None
            if isinstance(exc, TaskTooLargeError | TaskSerializationError | SharedMemoryFullError):
                passes = type(exc)
            self._send_error(key, priority, exc, passes)
            return self.topology.results_index(key)
        self._retire(refs, out)
        return index

    def _retire(self, incoming: list[Ref], outgoing: Iterable[Ref]) -> None:
        """Frees blocks of workers' arenas the task no longer refers to. The
        clients' arenas are theirs to free."""
        if not incoming:
            return
        kept = {(arena, block) for arena, block, _offset, _size in outgoing}
        for arena, block, _offset, _size in incoming:
            if arena >= self.topology.clients and (arena, block) not in kept:
                self.shm.arenas[arena].free(block)

    def drop(self, expired: list[_core.Message]) -> None:
        """Expired and cancelled tasks are not handled; their blocks are
        released, and a client whose blocks they held is told."""
        told: set[int] = set()
        for message in expired:
            if not message.kind & FLAG_REFS:
                continue
            refs, _body = split(message.payload)
            self._retire(refs, ())
            if any(arena < self.topology.clients for arena, *_rest in refs):
                index = self.topology.results_index(message.key)
                notice = _core.Message(
                    key=message.key, kind=KIND_DROPPED, payload=b"", priority=message.priority
                )
                self._push(index, notice)
                told.add(index)
        for index in told:
            self.topology.notify(index)

    def _push(self, index: int, message: _core.Message) -> None:
        """Pushes into queue ``index``, waiting for room (GIL released) while
        the task is still wanted: until its deadline, or for the core's
        ``PUSH_WAIT_NO_DEADLINE`` without one. A closed queue (the flow is
        stopping) or a caller that gave up drops it."""
        self.topology.queues[index].push_waiting(message)

    def _send_error(
        self,
        key: int,
        priority: int,
        exc: BaseException,
        kind: type[FlowError] | None = None,
        status: int = 500,
    ) -> None:
        payload = encode_error(self.step_name, exc, kind, status)
        message = _core.Message(key=key, kind=KIND_ERROR, payload=payload, priority=priority)
        self._push(self.topology.results_index(key), message)
