"""The examples in examples/ run as documented."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_demo(script: Path, requests: int) -> str:
    """Runs a demo script with a short load; returns what it printed."""
    env = {**os.environ, "DEMO_REQUESTS": str(requests), "DEMO_CONCURRENCY": "8"}
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "throughput:" in out.stdout and "p99" in out.stdout
    return out.stdout


def test_demo_serves_real_requests_and_reports_figures():
    assert "requests:   320 (0 errors)" in run_demo(EXAMPLES / "demo.py", 320)


def test_digits_demo_serves_a_real_model():
    pytest.importorskip("sklearn")
    stdout = run_demo(EXAMPLES / "digits" / "demo.py", 300)
    accuracy = float(stdout.split("accuracy:")[1].split("%")[0])
    assert accuracy > 90, stdout
    assert "(0 errors)" in stdout


GENERATE = EXAMPLES / "generate"


@contextlib.contextmanager
def served(script: Path) -> Iterator[str]:
    """Runs an example server on a free port; yields the line it printed
    when it listened, then stops it."""
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PORT": "0"},
    )
    try:
        yield proc.stdout.readline()  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_the_generative_example_streams_over_http():
    import http.client
    import json

    with served(GENERATE / "serve_http.py") as line:
        port = int(line.rsplit(":", 1)[1].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = {"prompt": "Beautiful is", "max_tokens": 80, "seed": 7}
        conn.request("POST", "/generate", body=json.dumps(body).encode())
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("content-type") == "text/event-stream"
        events = response.read().decode().split("\n\n")[:-1]
        chars = [e.removeprefix("data: ") for e in events[:-1]]
        final = json.loads(events[-1].removeprefix("data: "))
        assert len(chars) == 80 and final["tokens"] == 80
        # a character may be a newline, sent as an event of two empty data lines
        assert final["text"] == "Beautiful is" + "".join(c.replace("\ndata: ", "\n") for c in chars)


def test_the_generative_example_streams_over_fastapi():
    pytest.importorskip("fastapi")
    import importlib.util

    from fastapi.testclient import TestClient

    spec = importlib.util.spec_from_file_location("generate_fastapi", GENERATE / "serve_fastapi.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    with TestClient(module.app) as client:
        body = {"prompt": "Errors should", "max_tokens": 50, "seed": 3}
        with client.stream("POST", "/generate", json=body) as response:
            assert response.status_code == 200
            events = "".join(response.iter_text()).split("\n\n")[:-1]
        assert len(events) == 50


def test_the_generative_example_speaks_openai_to_the_official_client():
    openai = pytest.importorskip("openai")

    with served(GENERATE / "serve_openai.py") as line:
        base_url = line.split("listening on ")[1].strip()
        client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=60, max_retries=0)
        assert [m.id for m in client.models.list()] == ["char-model"]
        messages = [{"role": "user", "content": "Beautiful is"}]
        chunks = list(
            client.chat.completions.create(
                model="char-model", messages=messages, max_tokens=40, seed=7, stream=True
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(text) == 40
        assert chunks[-1].choices[0].finish_reason == "length"
        whole = client.completions.create(
            model="char-model", prompt="Beautiful is", max_tokens=40, seed=7
        )
        assert whole.choices[0].text == text  # the same seed writes the same text
        assert whole.usage is not None and whole.usage.completion_tokens == 40


def test_the_digits_example_speaks_the_open_inference_protocol_to_tritonclient():
    triton = pytest.importorskip("tritonclient.http")
    import numpy as np

    sys.path.insert(0, str(EXAMPLES / "digits"))
    try:
        from service import split_digits
    finally:
        sys.path.remove(str(EXAMPLES / "digits"))
    _, (images, labels) = split_digits()
    with served(EXAMPLES / "digits" / "serve_kserve.py") as line:
        url = line.split("listening on ")[1].strip()
        client = triton.InferenceServerClient(url, concurrency=8, network_timeout=60)
        assert client.is_model_ready("digits")
        assert client.get_model_metadata("digits")["inputs"][0]["shape"] == [1, 64]
        calls = []
        for image in images[:200]:
            tensor = triton.InferInput("image", [1, 64], "FP32")
            tensor.set_data_from_numpy(image.reshape(1, 64).astype(np.float32))
            calls.append(client.async_infer("digits", [tensor]))
        digits = [int(c.get_result(timeout=60).as_numpy("digit")[0]) for c in calls]
        accuracy = np.mean(np.array(digits) == labels[:200])
        assert accuracy > 0.9, accuracy
