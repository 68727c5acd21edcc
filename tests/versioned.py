"""Handlers that say which version of themselves handled a task (for
test_replace_handler.py and test_elastic.py; importable by name from
spawned workers, as ``support``)."""

from __future__ import annotations

import os
import time

from aqueduct import BaseTask, BaseTaskHandler, current_worker


class Asked(BaseTask):
    def __init__(self) -> None:
        super().__init__()
        self.version: str | None = None
        self.pid = 0
        self.worker = -1


class Versioned(BaseTaskHandler):
    """Sets ``version``, ``pid`` and ``worker`` on each task after ``work``
    seconds (asleep, or busy on a core with ``spin``). ``on_start`` takes
    ``start_delay`` seconds, and raises for workers numbered in
    ``fail_workers`` (all of them with ``fail=True``)."""

    def __init__(
        self,
        version: str,
        *,
        work: float = 0.002,
        spin: bool = False,
        start_delay: float = 0.0,
        fail: bool = False,
        fail_workers: tuple[int, ...] = (),
    ) -> None:
        self.version = version
        self.work = work
        self.spin = spin
        self.start_delay = start_delay
        self.fail = fail
        self.fail_workers = fail_workers

    def on_start(self) -> None:
        time.sleep(self.start_delay)
        info = current_worker()
        assert info is not None
        self.number = info.index
        if self.fail or info.index in self.fail_workers:
            raise RuntimeError(f"version {self.version} cannot start worker {info.index}")

    def handle(self, *tasks: Asked) -> None:
        if self.spin:
            until = time.perf_counter() + self.work
            while time.perf_counter() < until:
                pass
        else:
            time.sleep(self.work)
        for task in tasks:
            task.version = self.version
            task.pid = os.getpid()
            task.worker = self.number
