"""torch CPU tensors through shared memory, as numpy arrays go.

torch pickles a tensor by saving its storage into bytes inside the pickle
(a copy, and another one when it is read). A task field holding a CPU
tensor of at least ``THRESHOLD`` bytes is instead pickled as its raw bytes
out of band (``TensorOutOfBand``), so those bytes go into an arena — or
are passed by reference when the tensor already lives in one — and the
receiver rebuilds a tensor over its view of the arena without copying.
torch is never imported here: a tensor exists only where the user's code
imported torch already.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

from .._core import BUFFER_THRESHOLD

__all__ = ["TensorOutOfBand", "is_big_tensor", "is_tensor", "over_buffer", "raw_bytes", "shared"]


def is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def is_big_tensor(value: Any) -> bool:
    """A CPU tensor big enough for shared memory."""
    return is_tensor(value) and value.is_cpu and value.nbytes >= BUFFER_THRESHOLD


def raw_bytes(tensor: Any) -> Any:
    """The tensor's bytes as a numpy array of uint8 (a view when it is
    contiguous; any dtype, bfloat16 included)."""
    import torch

    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy()


def _dtype_name(tensor: Any) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def shared(tensor: Any, arena: Any) -> Any:
    """``tensor``'s values in a block of ``arena`` (a ``SharedArena``), as
    a tensor; the tensor itself when it lives in the arena already."""
    if not tensor.is_cpu:
        raise ValueError(f"only CPU tensors can be shared, not one on {tensor.device}")
    raw = raw_bytes(tensor)
    if arena.locate(raw) is not None:
        return tensor
    block = arena.place(raw, 0)
    view = arena.view(block, block, raw.nbytes)
    return over_buffer(memoryview(view), _dtype_name(tensor), tuple(tensor.shape))


def over_buffer(buffer: Any, dtype: str, shape: tuple[int, ...]) -> Any:
    """A tensor of ``dtype`` and ``shape`` over ``buffer``'s bytes (sharing
    them; the tensor keeps ``buffer`` alive)."""
    import torch

    if memoryview(buffer).readonly:
        buffer = bytearray(buffer)  # torch wants a writable buffer
    flat = torch.frombuffer(buffer, dtype=torch.uint8)
    return flat.view(getattr(torch, dtype)).reshape(shape)


class TensorOutOfBand:
    """Marks a big tensor field for out-of-band pickling (see the module docs)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        tensor = self.value
        buffer = pickle.PickleBuffer(raw_bytes(tensor))
        return (over_buffer, (buffer, _dtype_name(tensor), tuple(tensor.shape)))
