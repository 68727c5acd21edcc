"""The Open Inference Protocol (KServe v2 REST) from the Rust HTTP front:
what ``tritonclient``, KServe, MLServer and Triton's tools talk to::

    from aqueduct.kserve import KServe, Model, Tensor

    digits = Model(
        "digits",
        inputs=[Tensor("images", "FP32", (-1, 64))],
        outputs=[Tensor("labels", "INT64", (-1,))],
    )
    serve(flow, routes=KServe(digits).routes())

answers ``GET /v2/health/live``, ``/v2/health/ready``, ``GET /v2`` (the
server's metadata), ``GET /v2/models/{name}`` (the model's) and
``/v2/models/{name}/ready``, and ``POST /v2/models/{name}/infer`` (also
under ``/versions/{version}``) with JSON ``data`` or the binary tensor
extension (``Inference-Header-Content-Length``; what ``tritonclient``
sends by default), every datatype of the protocol. The front checks each
request against the model's declared inputs (names, datatypes, shapes with
``-1`` for any size, the data's length) and answers a misfit with a 400
``{"error": ...}`` before a worker sees it; it sends the inputs to the
workers as one table of tensors — into shared memory when they are big —
and ``task_from_request`` gets an :class:`InferRequest` whose ``inputs``
are numpy arrays over those bytes (no copy: they are valid while the
request is handled; copy one to keep it longer). The handler sets the
task's ``outputs`` (name -> array); the front writes each output the
request asked for, as JSON or binary data as it asked.

Triton's ``priority`` parameter (1 the highest, 0 the default) maps onto
the flow's ``queue_priorities`` (1 -> the highest level), its ``timeout``
(microseconds) replaces the server's for the request. Each model is ready
(``/v2/models/{name}/ready``) when the server serves and the steps it
names have their workers; ``/v2/health/ready`` when every step has.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import _core
from ._ipc.http_messages import Request
from .http import Route
from .task import BaseTask

__all__ = ["DATATYPES", "InferRequest", "Inference", "KServe", "Model", "Tensor"]

#: The protocol's datatypes.
DATATYPES: tuple[str, ...] = tuple(_core.TENSOR_DATATYPES)
#: numpy's dtype of each datatype (BF16 and BYTES are made apart).
_NUMPY = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


@dataclass(frozen=True)
class Tensor:
    """An input or output a model declares: its name, datatype (one of
    :data:`DATATYPES`) and shape (``-1``: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a tensor needs a name, not {self.name!r}")
        if self.datatype not in DATATYPES:
            raise ValueError(
                f"tensor {self.name}: datatype {self.datatype!r} is not one of {DATATYPES}"
            )
        shape = tuple(self.shape)
        if not all(isinstance(d, int) and d >= -1 for d in shape):
            raise ValueError(f"tensor {self.name}: a shape is whole numbers >= -1, not {shape}")
        object.__setattr__(self, "shape", shape)

    def declared(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class InferRequest:
    """An ``infer`` request, as ``task_from_request`` gets it in a worker
    (the front has checked it against the model): ``inputs``, name -> numpy
    array, in the model's order; the request's ``parameters`` and ``id``
    (read from the request when first asked for)."""

    __slots__ = ("_fields", "_meta", "inputs", "model", "request_id")

    def __init__(
        self, model: str, inputs: dict[str, Any], meta: bytes = b"{}", request_id: str = ""
    ) -> None:
        self.model, self.inputs, self.request_id = model, inputs, request_id
        self._meta = meta
        self._fields: dict[str, Any] | None = None

    def _read(self) -> dict[str, Any]:
        if self._fields is None:
            self._fields = json.loads(self._meta)
        return self._fields

    @property
    def parameters(self) -> dict[str, Any]:
        """The request's ``parameters`` (Triton's among them)."""
        parameters: dict[str, Any] = self._read().get("parameters") or {}
        return parameters

    @property
    def id(self) -> str | None:
        """The request's ``id``, which its answer repeats."""
        given: str | None = self._read().get("id")
        return given

    def __repr__(self) -> str:
        return f"<InferRequest {self.model} {sorted(self.inputs)}>"


class Inference(BaseTask):
    """The default task of a model: its request's ``inputs`` (and the
    request, for its ``parameters``), and the ``outputs`` the handler sets
    (name -> array, or a list for ``BYTES``)."""

    def __init__(self, request: InferRequest) -> None:
        super().__init__()
        self.model = request.model
        self.inputs = request.inputs
        #: The request itself (its ``parameters``, its ``id``).
        self.request = request
        self.outputs: dict[str, Any] = {}


def _bfloat16() -> Any:
    """ml_dtypes' bfloat16 (what tritonclient uses), or None."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    return ml_dtypes.bfloat16


def _input(body: Any, datatype: str, shape: list[int], offset: int, length: int) -> Any:
    """A tensor of the table ``body`` as a numpy array over its bytes."""
    import numpy

    count = 1
    for dim in shape:
        count *= dim
    if datatype == "BYTES":
        view, out = memoryview(body)[offset : offset + length], numpy.empty(count, dtype=object)
        at = 0
        for index in range(count):
            (size,) = struct.unpack_from("<I", view, at)
            out[index] = bytes(view[at + 4 : at + 4 + size])
            at += 4 + size
        return out.reshape(shape)
    if datatype == "BF16":
        bf16 = _bfloat16()
        if bf16 is not None:
            return numpy.frombuffer(body, bf16, count, offset).reshape(shape)
        bits = numpy.frombuffer(body, "<u2", count, offset).astype("<u4") << 16
        return bits.view("<f4").reshape(shape)  # float32, the same values
    return numpy.frombuffer(body, _NUMPY[datatype], count, offset).reshape(shape)


def _output(spec: Tensor, value: Any) -> tuple[str, str, list[int], Any]:
    """An output's entry of the answer's table: ``value`` as the bytes of
    its declared datatype."""
    import numpy

    if spec.datatype == "BYTES":
        items = numpy.asarray(value, dtype=object)
        flat = [_as_bytes(v) for v in items.reshape(-1)]
        data = b"".join(struct.pack("<I", len(v)) + v for v in flat)
        return spec.name, spec.datatype, list(items.shape), data
    if spec.datatype == "BF16":
        array = numpy.asarray(value)
        bf16 = _bfloat16()
        if bf16 is not None:
            raw = numpy.ascontiguousarray(array.astype(bf16)).view("<u2")
        else:  # float32, rounded to the nearest bfloat16
            bits = numpy.ascontiguousarray(array, dtype="<f4").view("<u4")
            raw = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")
        return spec.name, spec.datatype, list(array.shape), raw
    array = numpy.ascontiguousarray(value, dtype=_NUMPY[spec.datatype])
    return spec.name, spec.datatype, list(array.shape), array


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    raise ValueError(f"a BYTES element must be bytes or str, not {type(value).__name__}")


class Model:
    """A model served over the protocol.

    ``inputs`` and ``outputs``: what it declares (:class:`Tensor`\\ s; its
    metadata lists them, requests are checked against the inputs).
    ``task_from_request``: an :class:`InferRequest` -> the task (default
    :class:`Inference`). ``outputs_from_task``: the task -> its outputs,
    name -> array (default: ``task.outputs``); an output the request asks
    for and the model did not give is a 500. ``steps``: the names of the
    flow's steps that must have their workers for the model to be ready
    (default: every step): each as the flow names it (``step1_Echo``,
    unless its handler's ``get_step_name`` says otherwise) or its index
    from 0. ``version`` and ``platform``: what its metadata says."""

    def __init__(
        self,
        name: str,
        inputs: Sequence[Tensor],
        outputs: Sequence[Tensor],
        *,
        task_from_request: Callable[[InferRequest], Any] = Inference,
        outputs_from_task: Callable[[Any], Mapping[str, Any]] | None = None,
        version: str = "1",
        platform: str = "aqueduct",
        steps: Iterable[str | int] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name or "/" in name or not name.isprintable():
            raise ValueError(f"a model name is printable text without '/', not {name!r}")
        if not isinstance(version, str) or not version or "/" in version:
            raise ValueError(f"a model version is text without '/', not {version!r}")
        for kind, tensors in (("inputs", inputs), ("outputs", outputs)):
            if not all(isinstance(t, Tensor) for t in tensors):
                raise TypeError(f"{kind} must be Tensors")
            names = [t.name for t in tensors]
            if len(set(names)) != len(names):
                raise ValueError(f"model {name}: {kind} with the same name")
        if not outputs:
            raise ValueError(f"model {name} declares no outputs")
        self.name, self.version, self.platform = name, version, platform
        self.inputs, self.outputs = tuple(inputs), tuple(outputs)
        self.steps = None if steps is None else tuple(steps)
        self._make = task_from_request
        self._outputs = outputs_from_task
        self._specs = {t.name: t for t in self.outputs}

    def declared(self) -> dict[str, Any]:
        """What the front is told of the model (without its route and steps)."""
        return {
            "name": self.name,
            "version": self.version,
            "platform": self.platform,
            "inputs": [t.declared() for t in self.inputs],
            "outputs": [t.declared() for t in self.outputs],
        }

    def served(self, route: int, step_names: Sequence[str], priority_levels: int) -> dict[str, Any]:
        """What the front is told of the model when it is served by route
        ``route`` of a flow with steps ``step_names``: its declaration, its
        route, its steps (indices) and the flow's priority levels."""
        steps = range(len(step_names)) if self.steps is None else self.steps
        indices = [self._step_index(step, step_names) for step in steps]
        return self.declared() | {
            "route": route,
            "steps": indices,
            "priority_levels": priority_levels,
        }

    def _step_index(self, step: str | int, step_names: Sequence[str]) -> int:
        if isinstance(step, int) and 0 <= step < len(step_names):
            return step
        if step in step_names:
            return step_names.index(str(step))
        known = ", ".join(step_names)
        raise ValueError(f"model {self.name} needs step {step!r}, which the flow has not ({known})")

    def task_from_request(self, request: Request) -> Any:
        body = request.body
        meta, entries = _core.read_tensor_table(body)
        inputs = {
            name: _input(body, datatype, shape, at, n) for name, datatype, shape, at, n in entries
        }
        return self._make(InferRequest(self.name, inputs, meta, request.request_id))

    def response_from_task(self, task: Any) -> bytes:
        given = task.outputs if self._outputs is None else self._outputs(task)
        entries = []
        for name, value in given.items():
            spec = self._specs.get(name)
            if spec is None:
                raise ValueError(f"model {self.name} declares no output {name!r}")
            entries.append(_output(spec, value))
        return _core.write_tensor_table(b"", entries)

    def __repr__(self) -> str:
        return f"<Model {self.name} v{self.version}>"


#: The path of a model's inference.
INFER_PATH = "/v2/models/{}/infer"


class KServe:
    """The protocol's routes for ``models``, for ``routes=`` of
    ``aqueduct.http.serve``, ``Server`` or ``Service`` (it may be merged
    with other routes: ``{**KServe(m).routes(), "/predict": ...}``)."""

    def __init__(self, *models: Model) -> None:
        if not models or not all(isinstance(m, Model) for m in models):
            raise TypeError("KServe serves one Model or more")
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ValueError(f"two models with one name among {names}")
        self.models = models

    def routes(self) -> dict[str, Route]:
        """Path -> Route: each model's ``infer``."""
        return {
            INFER_PATH.format(model.name): Route(
                model.task_from_request,
                model.response_from_task,
                protocol="kserve",
                tensors=model,
                summary=f"Open Inference Protocol infer of {model.name}",
            )
            for model in self.models
        }
