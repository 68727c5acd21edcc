"""The Open Inference Protocol (aqueduct.kserve), talked to by
``tritonclient[http]`` and by raw HTTP where the wire itself is checked.
Real server, real sockets, bounded waits."""

from __future__ import annotations

import gzip
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as triton
from aqueduct import BaseTaskHandler, Flow, FlowStep
from aqueduct.http import Server
from aqueduct.kserve import KServe, Model, Tensor
from support import WAIT
from test_http import call, service
from tritonclient.utils import InferenceServerException

SERVICE = Path(__file__).parent / "tensor_service.py"

#: A value of each datatype, as tritonclient sends it.
SAMPLES = {
    "BOOL": np.array([[True, False, True]]),
    "UINT8": np.array([[0, 7, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**64 - 1]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 0, 2**63 - 1]], dtype=np.int64),
    "FP16": np.array([[0.5, -2.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5, 3e38]], dtype=np.float32),
    "FP64": np.array([[0.1, -1e-300, 1e300]], dtype=np.float64),
    "BF16": np.array([[1.5, -256.0, 3.0e38]], dtype=ml_dtypes.bfloat16),
    "BYTES": np.array([[b"a", b"", "é".encode()]], dtype=np.object_),
}


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with service(SERVICE) as (port, _):
        yield port


def client(port: int) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=WAIT)


def echo_inputs(binary: bool, fp32: np.ndarray | None = None) -> list[triton.InferInput]:
    inputs = []
    for datatype, value in SAMPLES.items():
        if datatype == "FP32" and fp32 is not None:
            value = fp32
        tensor = triton.InferInput(datatype.lower(), list(value.shape), datatype)
        # tritonclient sends BF16 only as binary
        tensor.set_data_from_numpy(value, binary_data=binary or datatype == "BF16")
        inputs.append(tensor)
    return inputs


def sum_input(x: np.ndarray, binary: bool = True) -> list[triton.InferInput]:
    tensor = triton.InferInput("x", list(x.shape), "FP64")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return [tensor]


def test_health_metadata_and_readiness_through_tritonclient(port):
    api = client(port)
    assert api.is_server_live() and api.is_server_ready()
    assert api.is_model_ready("echo") and api.is_model_ready("sum", "2")
    assert not api.is_model_ready("sum", "1"), "a version it does not serve"
    assert not api.is_model_ready("nope")
    server = api.get_server_metadata()
    assert server["name"] == "aqueduct" and "binary_tensor_data" in server["extensions"]
    meta = api.get_model_metadata("sum")
    assert meta["versions"] == ["2"] and meta["platform"] == "aqueduct"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1, 3]}]
    assert [o["name"] for o in meta["outputs"]] == ["sum", "pid"]
    with pytest.raises(InferenceServerException, match="unknown model nope"):
        api.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_every_datatype_round_trips_as_numpy(port, binary):
    names = [d.lower() for d in SAMPLES]
    outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = client(port).infer("echo", echo_inputs(binary), outputs=outputs)
    for datatype, sent in SAMPLES.items():
        got = result.as_numpy(datatype.lower())
        assert got.shape == sent.shape, datatype
        assert got.dtype == sent.dtype or datatype in ("BYTES", "BOOL"), (datatype, got.dtype)
        if datatype == "BYTES":
            assert [bytes(v) if isinstance(v, bytes) else v.encode() for v in got.ravel()] == list(
                sent.ravel()
            )
        else:
            np.testing.assert_array_equal(got.astype(sent.dtype), sent, err_msg=datatype)
        wire = result.get_output(datatype.lower())
        assert ("data" in wire) is (not binary), wire


def test_with_no_outputs_named_every_output_comes_back_binary(port):
    result = client(port).infer("sum", sum_input(np.ones((4, 3))))
    np.testing.assert_array_equal(result.as_numpy("sum"), [3.0] * 4)
    assert result.get_output("sum")["parameters"]["binary_data_size"] == 32
    response = result.get_response()
    assert response["model_name"] == "sum" and response["model_version"] == "2"


def test_a_big_tensor_reaches_the_handler_over_shared_memory_and_comes_back(port):
    big = np.random.default_rng(1).random((1024, 1024), dtype=np.float32)  # 4 MiB
    result = client(port).infer("echo", echo_inputs(True, fp32=big))
    np.testing.assert_array_equal(result.as_numpy("fp32"), big)
    assert result.as_numpy("where")[0] == b"ShmView", "a view of the arena, not a copy"
    small = client(port).infer("echo", echo_inputs(True))
    assert small.as_numpy("where")[0] == b"bytes"


def test_requests_to_a_model_are_batched_through_its_step(port):
    api = triton.InferenceServerClient(f"127.0.0.1:{port}", concurrency=8, network_timeout=WAIT)
    calls = [api.async_infer("echo", echo_inputs(True)) for _ in range(32)]
    batches = [c.get_result(timeout=WAIT).as_numpy("batch")[0] for c in calls]
    assert max(batches) > 1, batches


def test_misfits_are_400s_that_tritonclient_raises_with_the_reason(port):
    api = client(port)
    cases = [
        (sum_input(np.ones((2, 4))), "input x has shape [2, 4], the model takes [-1, 3]"),
        ([triton.InferInput("x", [1, 3], "FP32")], "input x is FP64"),
        ([triton.InferInput("y", [1, 3], "FP64")], "model sum has no input y"),
    ]
    for inputs, says in cases:
        if inputs[0].datatype() == "FP32":
            inputs[0].set_data_from_numpy(np.ones((1, 3), dtype=np.float32))
        elif inputs[0].name() == "y":
            inputs[0].set_data_from_numpy(np.ones((1, 3)))
        with pytest.raises(InferenceServerException, match=r"\[400\] " + says.replace("[", r"\[")):
            api.infer("sum", inputs)
    with pytest.raises(InferenceServerException, match="no output nope"):
        api.infer("sum", sum_input(np.ones((1, 3))), outputs=[triton.InferRequestedOutput("nope")])
    with pytest.raises(InferenceServerException, match="has no version 1"):
        api.infer("sum", sum_input(np.ones((1, 3))), model_version="1")
    with pytest.raises(InferenceServerException, match="unknown model"):
        api.infer("nope", sum_input(np.ones((1, 3))))
    assert api.infer("sum", sum_input(np.ones((1, 3)))).as_numpy("sum")[0] == 3.0


def test_the_wire_refuses_what_it_cannot_read_with_a_json_error(port):
    path = "/v2/models/sum/infer"
    good = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]}
    status, headers, body = call(port, b"{not json", path=path)
    assert status == 400 and "not JSON" in json.loads(body)["error"]
    status, _, body = call(port, good, path=path, headers={"Inference-Header-Content-Length": "x"})
    assert status == 400 and "Inference-Header-Content-Length" in json.loads(body)["error"]
    data = json.dumps(good).encode()
    status, _, body = call(
        port, data, path=path, headers={"Inference-Header-Content-Length": str(len(data) + 5)}
    )
    assert status == 400 and "the body only" in json.loads(body)["error"]
    status, _, body = call(
        port, gzip.compress(data), path=path, headers={"Content-Encoding": "gzip"}
    )
    assert status == 415 and "gzip" in json.loads(body)["error"]
    status, headers, _ = call(port, path=path, method="GET")
    assert status == 405 and headers["allow"] == "POST"
    status, headers, body = call(port, good, path=path)
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["outputs"][0]["data"] == [6.0]


def test_a_handler_that_raises_is_a_500_and_the_model_keeps_serving(port):
    api = client(port)
    with pytest.raises(InferenceServerException, match=r"\[500\].*-1 is not summed"):
        api.infer("sum", sum_input(-np.ones((1, 3))))
    assert api.infer("sum", sum_input(np.ones((1, 3)))).as_numpy("sum")[0] == 3.0


def test_tritons_timeout_parameter_bounds_the_request(port):
    # 1 µs: over before any worker could answer
    with pytest.raises(InferenceServerException, match=r"\[504\]"):
        client(port).infer("echo", echo_inputs(True), timeout=1)
    assert client(port).infer("sum", sum_input(np.ones((1, 3))), priority=1).as_numpy("sum")[0] == 3


def test_each_model_has_its_own_readiness():
    with service(SERVICE) as (port, _):
        api = client(port)
        pid = int(api.infer("sum", sum_input(np.ones((1, 3)))).as_numpy("pid")[0])
        os.kill(pid, signal.SIGKILL)
        seen = []
        until = time.monotonic() + WAIT
        while time.monotonic() < until:
            sum_ready = call(port, path="/v2/models/sum/ready", method="GET")[0]
            echo_ready = call(port, path="/v2/models/echo/ready", method="GET")[0]
            server_ready = call(port, path="/v2/health/ready", method="GET")[0]
            if call(port, path="/v2/models/sum/ready", method="GET")[0] != sum_ready:
                continue  # sum went down or came back between the probes: not one state
            if sum_ready != 200:
                seen.append((sum_ready, echo_ready, server_ready))
            elif seen:
                break  # sum is back
            time.sleep(0.005)
        assert seen and all(s == (503, 200, 503) for s in seen), seen
        assert api.is_model_ready("sum") and api.is_server_ready()
        assert api.infer("sum", sum_input(np.ones((1, 3)))).as_numpy("sum")[0] == 3.0


def test_probes_need_no_api_key_the_rest_does():
    with service(SERVICE, AQUEDUCT_API_KEYS="sesame") as (port, _):
        assert call(port, path="/v2/health/live", method="GET")[0] == 200
        assert call(port, path="/v2/health/ready", method="GET")[0] == 200
        assert call(port, path="/v2/models/sum", method="GET")[0] == 401
        keyed = triton.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=WAIT)
        with pytest.raises(InferenceServerException, match=r"\[401\]"):
            keyed.infer("sum", sum_input(np.ones((1, 3))))
        result = keyed.infer(
            "sum", sum_input(np.ones((1, 3))), headers={"Authorization": "Bearer sesame"}
        )
        assert result.as_numpy("sum")[0] == 3.0


class _Nothing(BaseTaskHandler):
    def handle(self, *tasks: object) -> None:
        pass


def test_bad_declarations_are_refused_when_made():
    out = [Tensor("o", "FP32", (-1,))]
    with pytest.raises(ValueError, match="datatype 'FP8'"):
        Tensor("x", "FP8", (1,))
    with pytest.raises(ValueError, match="whole numbers >= -1"):
        Tensor("x", "FP32", (-2,))
    with pytest.raises(ValueError, match="declares no outputs"):
        Model("m", [], [])
    with pytest.raises(ValueError, match="outputs with the same name"):
        Model("m", [], out * 2)
    with pytest.raises(ValueError, match="without '/'"):
        Model("a/b", [], out)
    model = Model("m", [], out, steps=["nope"])
    with pytest.raises(ValueError, match="two models"):
        KServe(model, model)
    flow = Flow(FlowStep(_Nothing()))
    with pytest.raises(ValueError, match="needs step 'nope', which the flow has not"):
        Server(flow, routes=KServe(model).routes(), port=0)
    assert not flow.is_running
