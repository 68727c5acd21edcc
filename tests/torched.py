"""Tasks and handlers with torch tensors (for test_torch.py; importable by
name from spawned workers, as ``support``). torch is imported in the
handler: the module itself imports without it."""

from __future__ import annotations

from typing import Any

from aqueduct import BaseTask, BaseTaskHandler


class Tensors(BaseTask):
    def __init__(self, x: Any) -> None:
        super().__init__()
        self.x = x
        self.out: Any = None
        self.seen: dict[str, Any] = {}


class Triple(BaseTaskHandler):
    """Doubles ``x`` in place, sets ``out = x * 1.5`` (3 times the original)
    and notes what the worker got."""

    def handle(self, *tasks: Tensors) -> None:
        import torch

        for task in tasks:
            task.seen = {
                "type": type(task.x).__name__,
                "dtype": str(task.x.dtype),
                "shape": tuple(task.x.shape),
            }
            task.x.mul_(2)
            task.out = (task.x.to(torch.float32) * 1.5).to(task.x.dtype)
