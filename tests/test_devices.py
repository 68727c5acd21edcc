"""FlowStep(devices=..., env=...): each worker pinned to its device, its
environment set before the handler's module is imported, kept by a
respawned worker; ``current_worker()`` says which worker and device."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from aqueduct import FlowStep, current_worker
from placed import Reporter, Where
from support import eventually


def _reports(where: Path, n: int) -> list[dict[str, object]]:
    files = [where / f"{i}.json" for i in range(n)]
    eventually(lambda: all(f.exists() for f in files), what="every worker's report")
    return [json.loads(f.read_text()) for f in files]


@pytest.mark.parametrize("method", ["spawn", "fork"])
async def test_workers_get_their_devices_round_robin_before_the_handler_loads(
    make_flow, tmp_path, method
):
    env = lambda number: {"REPORT_DIR": str(tmp_path), "EXTRA": f"w{number}"}  # noqa: E731
    step = FlowStep(Reporter(), nprocs=3, devices=[0, "1"], env=env)
    flow = make_flow(step, mp_start_method=method)
    reports = _reports(tmp_path, 3)
    assert [r["device"] for r in reports] == ["0", "1", "0"]
    assert [r["cuda"] for r in reports] == ["0", "1", "0"]
    assert [r["env_index"] for r in reports] == ["0", "1", "2"]
    assert [r["extra"] for r in reports] == ["w0", "w1", "w2"]
    assert {r["nprocs"] for r in reports} == {3}
    if method == "spawn":  # a forked worker imported the module in the parent
        assert [r["cuda_at_import"] for r in reports] == ["0", "1", "0"]
    task = Where()
    assert await flow.process(task, timeout_sec=10)
    assert task.info["device"] in ("0", "1")
    assert current_worker() is None, "not a worker"


async def test_a_respawned_worker_gets_the_device_of_the_one_it_replaces(make_flow, tmp_path):
    step = FlowStep(Reporter(), nprocs=2, devices=["0", "1"], env={"REPORT_DIR": str(tmp_path)})
    flow = make_flow(step)
    first = _reports(tmp_path, 2)
    (tmp_path / "1.json").unlink()
    os.kill(int(first[1]["pid"]), signal.SIGKILL)
    again = _reports(tmp_path, 2)[1]
    assert again["pid"] != first[1]["pid"]
    assert (again["index"], again["device"], again["cuda"]) == (1, "1", "1")
    assert await flow.process(Where(), timeout_sec=10)


def test_a_step_without_devices_leaves_the_gpus_alone(tmp_path):
    step = FlowStep(Reporter(), nprocs=2)
    assert step.placement(1) == (None, {"AQUEDUCT_WORKER_INDEX": "1"})


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"devices": []}, ValueError),
        ({"devices": [-1]}, ValueError),
        ({"devices": [0.5]}, TypeError),
        ({"env": {"A": 1}}, TypeError),
        ({"env": "A=1"}, TypeError),
    ],
)
def test_devices_and_env_that_cannot_be_are_refused_when_the_step_is_made(kwargs, error):
    with pytest.raises(error):
        FlowStep(Reporter(), nprocs=2, **kwargs)
