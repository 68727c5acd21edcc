"""torch CPU tensors go through shared memory like numpy arrays: a shared
field is changed in place by the worker, big tensors of any dtype and
layout travel out of band and come back as tensors. Skipped without torch."""

from __future__ import annotations

import asyncio

import pytest
from aqueduct import FlowStep
from aqueduct.flow import runtime_of
from torched import Tensors, Triple

torch = pytest.importorskip("torch")

MIB = 1 << 20


async def test_a_shared_tensor_is_changed_in_place_by_the_worker(make_flow):
    flow = make_flow(FlowStep(Triple()))
    original = torch.arange(MIB // 4, dtype=torch.float32)
    task = Tensors(original.clone())
    task.share_value("x")
    assert task.x.data_ptr() != original.data_ptr()
    assert flow.shm_used >= MIB
    assert await asyncio.wait_for(flow.process(task, timeout_sec=10), 15)
    assert task.seen == {
        "type": "Tensor",
        "dtype": "torch.float32",
        "shape": (MIB // 4,),
    }
    assert torch.equal(task.x, original * 2), "the worker changed the caller's tensor"
    assert isinstance(task.out, torch.Tensor)
    assert torch.equal(task.out, original * 3)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int64", "uint8"])
async def test_big_tensors_of_any_dtype_and_layout_travel_and_come_back(make_flow, dtype):
    flow = make_flow(FlowStep(Triple()))
    kind = getattr(torch, dtype)
    base = (torch.arange(512 * 1024) % 50).to(kind).reshape(1024, 512)
    for x in (base, base.t()):  # contiguous, then a transposed view
        task = Tensors(x.clone())
        assert await asyncio.wait_for(flow.process(task, timeout_sec=10), 15)
        assert task.seen["dtype"] == f"torch.{dtype}"
        assert task.seen["shape"] == tuple(x.shape)
        assert torch.equal(task.x, x * 2)
        expected = ((x * 2).to(torch.float32) * 1.5).to(kind)
        assert task.out.dtype == kind and torch.equal(task.out, expected)
        assert _in_shared_memory(flow, task.out), "it came back as a view of an arena"


def _in_shared_memory(flow, tensor) -> bool:
    raw = tensor.reshape(-1).view(torch.uint8).numpy()
    return any(a.locate(raw) is not None for a in runtime_of(flow).topology.arenas)


async def test_small_tensors_travel_inside_the_message(make_flow):
    flow = make_flow(FlowStep(Triple()))
    task = Tensors(torch.ones(3, 3))
    assert await asyncio.wait_for(flow.process(task, timeout_sec=10), 15)
    assert torch.equal(task.out, torch.full((3, 3), 3.0))
    assert flow.shm_used == 0


def test_only_cpu_tensors_are_shared():
    task = Tensors(torch.ones(4, device="meta"))
    with pytest.raises(ValueError, match="CPU"):
        task.share_value("x")
