"""Handlers that stream, for the streaming tests (importable by name from
spawned workers, as ``support``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from aqueduct import BaseTask, BaseTaskHandler


class Prompt(BaseTask):
    """Asks for ``length`` parts; a handler sets ``text`` when done.
    ``log``: a file the worker appends what happened to (``stopped <n>``
    when it stopped producing after ``n`` parts)."""

    def __init__(self, name: str, length: int, log: str | None = None) -> None:
        super().__init__()
        self.name = name
        self.length = length
        self.log = log
        self.sent = 0
        self.text: str | None = None
        self.steps: list[str] = []

    def note(self, line: str) -> None:
        if self.log:
            with open(self.log, "a") as f:
                f.write(line + "\n")


def noted(path: str | Path) -> list[str]:
    """The lines workers noted in ``path`` so far."""
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


class Counter(BaseTaskHandler):
    """Emits ``<name>:<i>`` for i in 0..length, ``delay`` seconds apart,
    for every task of its batch in turn; stops for a task whose caller left
    (``stopped <name> <i>`` noted); then sets ``text``. A ``length`` of -1
    raises after two parts."""

    def __init__(self, delay: float = 0.0, prefix: str = "") -> None:
        self.delay = delay
        self.prefix = prefix

    def handle(self, *tasks: Prompt) -> None:
        live = list(tasks)
        i = 0
        while live:
            for task in list(live):
                if task.length == -1 and i == 2:
                    raise ValueError(f"{task.name} broke after 2 parts")
                if i >= task.length > -1:
                    live.remove(task)
                    continue
                if not task.emit(f"{self.prefix}{task.name}:{i}"):
                    task.note(f"stopped {task.name} {i}")
                    live.remove(task)
                    continue
                task.sent = i + 1
            i += 1
            time.sleep(self.delay)
        for task in tasks:
            task.text = f"{self.prefix}{task.name} done"
            task.steps.append(self.prefix or "one")


class Decoder(BaseTaskHandler):
    """Continuous batching: one token per active task per iteration (an
    iteration takes ``iteration`` seconds); a task that got ``length``
    tokens is finished. Each token says how many tasks shared the
    iteration; a task whose caller left is noted (``gone <name>``)."""

    def __init__(self, iteration: float = 0.005) -> None:
        self.iteration = iteration

    def handle(self, *active: Prompt) -> None:
        time.sleep(self.iteration)
        active[0].note("iteration " + " ".join(sorted(t.name for t in active)))
        for task in active:
            if task.is_cancelled():
                task.note(f"gone {task.name}")
                continue
            task.sent += 1
            task.emit(f"{task.name}:{task.sent}/{len(active)}")
            task.note(f"emitted {task.name} {task.sent}")
            if task.sent >= task.length:
                task.text = f"{task.name} done in {os.getpid()}"
                task.finish()


class Blobs(BaseTaskHandler):
    """Emits big parts: ``length`` bytes objects of 1 MiB, then a numpy
    array when numpy is there."""

    def handle(self, *tasks: Prompt) -> None:
        for task in tasks:
            for i in range(task.length):
                task.emit(bytes([i]) * (1 << 20))
            try:
                import numpy
            except ImportError:
                continue
            task.emit(numpy.arange(1 << 18, dtype=numpy.int64))
            task.text = "blobs"
