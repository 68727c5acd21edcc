"""A handler that reports where its worker was placed (for test_devices.py):
its module reads the environment when a worker imports it, so what it sees
is what the worker had before the handler's module was imported."""

from __future__ import annotations

import json
import os
from pathlib import Path

from aqueduct import BaseTask, BaseTaskHandler, current_worker

#: The worker's CUDA_VISIBLE_DEVICES when this module was imported.
AT_IMPORT = os.environ.get("CUDA_VISIBLE_DEVICES")


class Where(BaseTask):
    def __init__(self) -> None:
        super().__init__()
        self.info: dict[str, object] = {}


class Reporter(BaseTaskHandler):
    """Writes ``<REPORT_DIR>/<worker number>.json`` in ``on_start``; each
    task gets the same report."""

    def on_start(self) -> None:
        info = current_worker()
        assert info is not None
        self.report = {
            "pid": os.getpid(),
            "index": info.index,
            "nprocs": info.nprocs,
            "device": info.device,
            "step": info.step_name,
            "cuda_at_import": AT_IMPORT,
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "env_index": os.environ.get("AQUEDUCT_WORKER_INDEX"),
            "extra": os.environ.get("EXTRA"),
        }
        path = Path(os.environ["REPORT_DIR"]) / f"{info.index}.json"
        path.write_text(json.dumps(self.report))

    def handle(self, *tasks: Where) -> None:  # type: ignore[override]
        for task in tasks:
            task.info = self.report
