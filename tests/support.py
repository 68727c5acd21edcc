"""Tasks and handlers shared by the tests. Workers are spawned interpreters, so
what they run must be importable by name (this module is on sys.path)."""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aqueduct import BaseTask, BaseTaskHandler
from aqueduct.logger import log

#: The default bound of a test's wait for something it cannot be told of.
WAIT = 20.0

T = TypeVar("T")


def _failure(what: str | Callable[[], object], within: float) -> AssertionError:
    said = what() if callable(what) else what
    return AssertionError(f"not within {within} s: {said}")


def eventually(
    check: Callable[[], T],
    *,
    within: float = WAIT,
    every: float = 0.01,
    what: str | Callable[[], object] = "the condition",
) -> T:
    """Calls ``check`` until it returns something true and returns that; past
    ``within`` seconds the test fails, saying ``what`` (or what it returns).
    For what a test cannot be told of: a process exiting, a file appearing,
    a server answering again."""
    deadline = time.monotonic() + within
    while not (value := check()):
        if time.monotonic() > deadline:
            raise _failure(what, within)
        time.sleep(every)
    return value


async def eventually_async(
    check: Callable[[], T | Awaitable[T]],
    *,
    within: float = WAIT,
    every: float = 0.01,
    what: str | Callable[[], object] = "the condition",
) -> T:
    """``eventually`` for a test running in an event loop: ``check`` may be a
    coroutine function, and the loop runs between checks."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise _failure(what, within)
        await asyncio.sleep(every)


class Gate:
    """A handshake between a test and the worker that handles one task, so
    tests order events across processes without guessing times: the worker
    marks the gate reached when it starts on the task, then holds the task
    until the test opens the gate (at most ``HOLD_LIMIT`` seconds)."""

    HOLD_LIMIT = 15.0

    def __init__(self, directory: str | Path) -> None:
        name = uuid.uuid4().hex
        self.reached_path = str(Path(directory) / f"gate-{name}-reached")
        self.open_path = str(Path(directory) / f"gate-{name}-open")

    def hold(self) -> None:
        """In the worker: reached; wait until opened (or ``HOLD_LIMIT``
        passed: the test failed and left)."""
        Path(self.reached_path).touch()
        try:
            eventually(self.is_open, within=self.HOLD_LIMIT, every=0.002)
        except AssertionError:
            pass

    async def reached(self, within: float = WAIT) -> None:
        """In the test: until a worker holds the task."""
        await eventually_async(
            self.is_reached, within=within, every=0.002, what="a worker at the gate"
        )

    def is_open(self) -> bool:
        return os.path.exists(self.open_path)

    def is_reached(self) -> bool:
        return os.path.exists(self.reached_path)

    def open(self) -> None:
        Path(self.open_path).touch()


def pause(tasks: tuple[Task, ...]) -> None:
    """What a test handler does before its work: holds at the gates of its
    tasks, then sleeps the longest ``sleep`` of the batch."""
    for task in tasks:
        gate = getattr(task, "gate", None)  # duck-typed tasks may have none
        if gate is not None:
            gate.hold()
    time.sleep(max((t.sleep for t in tasks), default=0))


class Task(BaseTask):
    def __init__(self, value: int = 0, sleep: float = 0.0) -> None:
        super().__init__()
        self.value = value
        self.sleep = sleep
        self.result: int | None = None
        self.trail: list[str] = []
        self.pid: int | None = None
        self.batch_size: int | None = None
        self.order: int | None = None
        self.gate: Gate | None = None

    def gated(self, gate: Gate) -> Task:
        self.gate = gate
        return self


class Square(BaseTaskHandler):
    def handle(self, *tasks: Task) -> None:
        for task in tasks:
            task.result = task.value * task.value
            task.pid = os.getpid()


class SlowSquare(Square):
    """Squares after the tasks' gates and sleep (see ``pause``)."""

    def handle(self, *tasks: Task) -> None:
        pause(tasks)
        super().handle(*tasks)


class Recorder(BaseTaskHandler):
    """Appends its name to the task's trail; sleeps `task.sleep` per batch;
    numbers tasks in the order it handles them; notes the batch size."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.handled = 0

    def handle(self, *tasks: Task) -> None:
        pause(tasks)
        for task in tasks:
            self.handled += 1
            task.order = self.handled
            task.trail.append(self.name)
            task.batch_size = len(tasks)
            task.pid = os.getpid()


class SlowStart(BaseTaskHandler):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.model: str | None = None

    def on_start(self) -> None:
        time.sleep(self.delay)
        self.model = f"loaded in {os.getpid()}"

    def handle(self, *tasks: Task) -> None:
        for task in tasks:
            task.result = self.model  # type: ignore[assignment]


class FailingStart(BaseTaskHandler):
    def on_start(self) -> None:
        raise RuntimeError("model file is missing")

    def handle(self, *tasks: Task) -> None:
        raise AssertionError("never called")


class FailOn(BaseTaskHandler):
    """Raises ValueError for a batch holding a task whose value is `bad`."""

    def __init__(self, bad: int) -> None:
        self.bad = bad

    def handle(self, *tasks: Task) -> None:
        pause(tasks)
        for task in tasks:
            if task.value == self.bad:
                raise ValueError(f"cannot handle {task.value}")
            task.result = task.value


class Logs(BaseTaskHandler):
    def on_start(self) -> None:
        log.info("on_start in worker %d", os.getpid())

    def handle(self, *tasks: Task) -> None:
        for task in tasks:
            log.warning("handling task %s", task.value)
            task.pid = os.getpid()


class SetsUnpicklable(BaseTaskHandler):
    def handle(self, *tasks: Task) -> None:
        import threading

        for task in tasks:
            if task.value < 0:
                task.result = threading.Lock()  # type: ignore[assignment]
            else:
                task.result = task.value


def is_even(task: Task) -> bool:
    return task.value % 2 == 0


class DuckHandler:
    """Not a BaseTaskHandler subclass, but has what a handler needs."""

    def on_start(self) -> None:
        pass

    def handle(self, *tasks: Task) -> None:
        for task in tasks:
            task.result = -task.value


def shm_backed(value: object) -> bool:
    """True when a numpy array or memoryview lives in aqueduct's shared memory
    (its buffer chain ends at a view of an arena block, not at private memory)."""
    while True:
        base = getattr(value, "base", None)
        if base is None:
            base = getattr(value, "obj", None)
        if base is None:
            return type(value).__name__ == "ShmView"
        value = base


class ArrayTask(Task):
    def __init__(self, array: object = None, sleep: float = 0.0) -> None:
        super().__init__(sleep=sleep)
        self.array = array
        self.out: object = None
        self.seen_in_shm: list[bool] = []
        self.first: list[int] = []


class Doubler(BaseTaskHandler):
    """Sets `out = array * 2`; notes whether its input came as a shm view."""

    def handle(self, *tasks: ArrayTask) -> None:
        for task in tasks:
            task.seen_in_shm.append(shm_backed(task.array))
            task.out = task.array * 2


class Reader(BaseTaskHandler):
    """Only reads: notes the first element and whether the input is a shm view."""

    def handle(self, *tasks: ArrayTask) -> None:
        pause(tasks)
        for task in tasks:
            task.seen_in_shm.append(shm_backed(task.array))
            task.first.append(int(task.array.reshape(-1)[0]))


class IncrementInPlace(BaseTaskHandler):
    def handle(self, *tasks: ArrayTask) -> None:
        for task in tasks:
            task.array += 1


class Describe(BaseTaskHandler):
    """Records the type and length of every bytes-like field."""

    def handle(self, *tasks: Task) -> None:
        for task in tasks:
            task.result = {  # type: ignore[assignment]
                name: (type(value).__name__, len(value), bytes(value[:4]))
                for name, value in vars(task).items()
                if isinstance(value, bytes | bytearray | memoryview)
            }


class Mortal(BaseTaskHandler):
    """Counts its starts in a file; a task with value -9 kills the worker
    (SIGKILL to itself) after sleeping `sleep`; -1 exits the process."""

    def __init__(self, starts_file: str) -> None:
        self.starts_file = starts_file

    def on_start(self) -> None:
        with open(self.starts_file, "a") as f:
            f.write(f"{os.getpid()}\n")

    def handle(self, *tasks: Task) -> None:
        pause(tasks)
        for task in tasks:
            if task.value == -9:
                os.kill(os.getpid(), 9)
            if task.value == -1:
                os._exit(3)
            task.result = task.value
            task.pid = os.getpid()


class Raises(BaseTaskHandler):
    """Raises whatever the task asks for, or returns a value."""

    def handle(self, *tasks: Task) -> object:
        for task in tasks:
            if task.value == 1:
                raise SystemExit("handler called exit")
            if task.value == 2:
                raise KeyboardInterrupt
            if task.value == 3:
                raise UnprintableError
            task.result = task.value
        return "handlers may return anything"


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class DiesOnStart(BaseTaskHandler):
    def on_start(self) -> None:
        os._exit(7)

    def handle(self, *tasks: Task) -> None:
        pass


# -- processes, as /proc shows them -------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state, ppid, ...)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def children_of(parent: int) -> set[int]:
    """Live direct children of ``parent``."""
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat(int(name))
            if fields is not None and fields[0] != "Z" and int(fields[1]) == parent:
                out.add(int(name))
    return out


def descendants_of(root: int) -> set[int]:
    """Live children of ``root``, their children, and so on."""
    found: set[int] = set()
    todo = [root]
    while todo:
        for child in children_of(todo.pop()) - found:
            found.add(child)
            todo.append(child)
    return found


# -- task classes that pickle in their own ways -----------------------------------


class StatefulTask(Task):
    """Pickles through __getstate__/__setstate__ (never as a bare dict)."""

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["marker"] = "via getstate"
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)


class SlottedTask(Task):
    __slots__ = ("extra",)

    def __init__(self, value: int = 0) -> None:
        super().__init__(value)
        self.extra = "slot"


class UpdatingTask(Task):
    """Takes only `result` from the finished task, and says so."""

    def update(self, source_task: BaseTask, excluded_fields: set[str] | None = None) -> None:
        self.result = getattr(source_task, "result", None)
        self.updated_by = "custom update"


class GuardedTask(Task):
    """Refuses to have `locked` set."""

    def __setattr__(self, name: str, value: object) -> None:
        if name == "locked":
            raise AttributeError("locked is read-only")
        super().__setattr__(name, value)


class Rebrand(BaseTaskHandler):
    """Squares the value and tries to change the task's bookkeeping."""

    def handle(self, *tasks: Task) -> None:
        for task in tasks:
            task.result = task.value * task.value
            task.task_id = "changed by the worker"
            task.priority = 7
            task.expiration_time = 0.0
            task.pid = os.getpid()


def scribble(
    seed: int, names: tuple[str, ...] = ("aqueduct-",), span: int = 64 * 1024, skip: int = 0
) -> int:
    """Overwrites ``span`` bytes from byte ``skip`` of every shared writable
    mapping of this process whose memfd name starts with one of ``names``,
    with random bytes: what a buggy native extension in a handler can do.
    Returns how many mappings it hit."""
    import ctypes
    import random

    rng = random.Random(seed)
    hit = 0
    with open("/proc/self/maps") as maps:
        lines = maps.read().splitlines()
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[1].startswith("rw") or fields[1][3] != "s":
            continue
        path = fields[5]
        if not any(path.startswith(f"/memfd:{name}") for name in names):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        start += skip
        size = min(span, end - start)
        if size <= 0:
            continue
        noise = rng.randbytes(size)
        ctypes.memmove(start, noise, size)
        hit += 1
    return hit


class Scribbler(BaseTaskHandler):
    """Squares; a task with value -13 instead scribbles over the worker's
    shared segments whose names start with its ``target`` (default: all of
    aqueduct's) from byte ``skip`` (default 0), ``task.sleep`` being the seed."""

    def handle(self, *tasks: Task) -> None:
        for task in tasks:
            if task.value == -13:
                target = getattr(task, "target", "aqueduct-")
                skip = getattr(task, "skip", 0)
                task.result = scribble(seed=int(task.sleep), names=(target,), skip=skip)
                continue
            task.result = task.value * task.value


def serve_printing_port(flow: Any, **options: Any) -> None:
    """What a test service script does: serves ``flow`` on a free port,
    prints ``port <n>`` once it listens (the tests read it), and stops at
    once on SIGTERM."""
    from aqueduct.http import serve

    defaults = {"port": 0, "timeout": 20, "drain_delay": 0}
    serve(flow, on_ready=lambda port: print("port", port, flush=True), **(defaults | options))
