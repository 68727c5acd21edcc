"""`make bench-http`, its protocols stage: what the protocols clients speak
cost, in one run on the same machine.

* Open Inference Protocol: the no-op and model-emulator services at 1, 32
  and 256 wrk connections, each request in ``tritonclient``'s wire format
  (a JSON head, the input's bytes; binary outputs), on aqueduct's front
  (``oip_aqueduct.py``) and on Triton through PyTriton (``oip_pytriton.py``:
  Python backend, dynamic batcher 32 / 5 ms) — beside aqueduct's plain JSON
  route (``rust_front_service.py``); then a 4 MiB FP32 tensor's round trip
  through ``tritonclient`` on both.
* OpenAI-compatible streaming: the decode emulator at 64 streams, over
  aqueduct's OpenAI chat route (``stream_openai.py``), its plain SSE route
  (``stream_aqueduct.py``) and LitServe's ``OpenAISpec``
  (``stream_litserve.py``).

    python benches/http/protocols.py --pytriton-python .venv-pytriton/bin/python \\
        --litserve-python .venv-litserve/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from report import FOLDER, Report
from run import HERE, PORT, server_cpu_s, stop, wrk
from stream_client import chat_body, chat_token, load

CONNECTIONS = (1, 32, 256)
STREAMS = 64
OIP_PATH = "/v2/models/bench/infer"
#: One input of the size of the plain route's body, as tritonclient sends it.
OIP_SHAPE = (1, 8)


def oip_body(shape: tuple[int, int]) -> tuple[bytes, int]:
    """tritonclient's binary wire format for one FP32 input of ``shape``
    (binary outputs): the body and the length of its JSON head."""
    size = 4 * shape[0] * shape[1]
    head = {
        "inputs": [
            {
                "name": "x",
                "shape": list(shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": size},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    text = json.dumps(head).encode()
    return text + bytes(size), len(text)


def oip_script(directory: Path, shape: tuple[int, int] = OIP_SHAPE) -> Path:
    """A wrk script sending tritonclient's binary wire format."""
    body, head_len = oip_body(shape)
    escaped = "".join(f"\\{b:03d}" for b in body)
    script = directory / f"oip-{shape[0]}x{shape[1]}.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.body = "{escaped}"\n'
        'wrk.headers["Content-Type"] = "application/octet-stream"\n'
        f'wrk.headers["Inference-Header-Content-Length"] = "{head_len}"\n'
    )
    return script


def warm_up(path: str, body: bytes, headers: dict[str, str], timeout: float = 120) -> None:
    """Until a request to ``path`` is answered 200 (a model still loading is not)."""
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(
            f"http://127.0.0.1:{PORT}{path}", data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} answers no 200 after {timeout} s")
        time.sleep(0.5)


def wait_free(port: int, timeout: float = 60) -> None:
    """Until nothing listens on ``port`` (a server stopped just before may
    still hold it: Triton's does for a while)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"port {port} still taken after {timeout} s")


def launch(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    wait_free(PORT)
    return subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 240) -> None:
    """Until ``url`` answers 200 (or any answer, for a POST-only path)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    time.sleep(1.0)  # workers warm
                    return
        except urllib.error.HTTPError as e:
            if e.code == 405:  # up, the path takes POSTs only
                time.sleep(1.0)
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def pytriton_env(python: str) -> dict[str, str]:
    """PyTriton's Python backend stub needs the interpreter's libpython."""
    libdir = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return {"LD_LIBRARY_PATH": f"{libdir}:{os.environ.get('LD_LIBRARY_PATH', '')}"}


def client_round_trip_mb_s(port: int, trips: int = 30) -> float:
    """MB/s of a 4 MiB FP32 tensor sent and answered through tritonclient
    (tensor bytes / round trip; its client costs most of it)."""
    import numpy as np
    import tritonclient.http as triton

    client = triton.InferenceServerClient(f"127.0.0.1:{port}", network_timeout=60)
    x = np.random.default_rng(0).random((1, 1 << 20), dtype=np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    got = client.infer("bench", [tensor]).as_numpy("y")
    assert np.array_equal(got, x), "the tensor came back changed"
    started = time.perf_counter()
    for _ in range(trips):
        client.infer("bench", [tensor])
    return x.nbytes * trips / (time.perf_counter() - started) / 1e6


#: The big tensor: 4 MiB of FP32.
BIG_SHAPE = (1, 1 << 20)


def oip_stage(pytriton: str | None, seconds: int, directory: Path) -> dict[str, Any]:
    lua, big = oip_script(directory), oip_script(directory, BIG_SHAPE)
    small_body, small_head = oip_body(OIP_SHAPE)
    oip_headers = {"Inference-Header-Content-Length": str(small_head)}
    servers: dict[str, tuple[list[str], dict[str, str], Path, str, str]] = {
        "aqueduct plain": (
            [sys.executable, str(HERE / "rust_front_service.py")],
            {},
            HERE / "post.lua",
            "/inference",
            "/ready",
        ),
        "aqueduct oip": (
            [sys.executable, str(HERE / "oip_aqueduct.py")],
            {},
            lua,
            OIP_PATH,
            "/v2/health/ready",
        ),
    }
    if pytriton:
        servers["pytriton oip"] = (
            [pytriton, str(HERE / "oip_pytriton.py")],
            pytriton_env(pytriton),
            lua,
            OIP_PATH,
            "/v2/health/ready",
        )
    results: dict[str, Any] = {}
    for service in ("noop", "model"):
        for name, (command, env, script, path, ready) in servers.items():
            proc = launch([*command, "--service", service, "--port", str(PORT)], env)
            try:
                wait_ready(f"http://127.0.0.1:{PORT}{ready}", proc)
                if path == OIP_PATH:
                    warm_up(path, small_body, oip_headers)
                for connections in CONNECTIONS:
                    print(f"oip {service:<5} {name:<15} {connections:>3} ...", file=sys.stderr)
                    measured = wrk(connections, seconds, script, path)
                    results.setdefault(service, {}).setdefault(name, {})[str(connections)] = (
                        measured
                    )
                if service == "noop" and name != "aqueduct plain":
                    trips = wrk(1, seconds, big, path)
                    tensor_mb = 4 * BIG_SHAPE[1] / 1e6
                    results.setdefault("4 MiB", {})[name] = {
                        "wrk_mb_s": trips["rps"] * tensor_mb,
                        "wrk_p50_ms": trips["p50_ms"],
                        "tritonclient_mb_s": client_round_trip_mb_s(PORT),
                    }
            finally:
                stop(proc)
    return results


def stream_stage(litserve: str | None, seconds: int) -> dict[str, Any]:
    plain = {"make_body": None, "is_token": None}
    chat = {"make_body": chat_body, "is_token": chat_token}
    servers: dict[str, tuple[list[str], str, dict[str, Any]]] = {
        "aqueduct sse": ([sys.executable, str(HERE / "stream_aqueduct.py")], "/inference", plain),
        "aqueduct openai": (
            [sys.executable, str(HERE / "stream_openai.py")],
            "/v1/chat/completions",
            chat,
        ),
    }
    if litserve:
        servers["litserve openai"] = (
            [litserve, str(HERE / "stream_litserve.py")],
            "/v1/chat/completions",
            chat,
        )
    results: dict[str, Any] = {}
    for name, (command, path, shape) in servers.items():
        proc = launch([*command, "--port", str(PORT)])
        try:
            wait_ready(f"http://127.0.0.1:{PORT}/health", proc)
            given = {k: v for k, v in shape.items() if v is not None}
            print(f"stream {name:<16} {STREAMS} streams ...", file=sys.stderr)
            asyncio.run(load(PORT, path, STREAMS, 3, **given))  # warm-up
            before = server_cpu_s(proc.pid)
            result = asyncio.run(load(PORT, path, STREAMS, seconds, **given))
            result["front_us_per_token"] = (
                (server_cpu_s(proc.pid) - before) / max(result["tokens"], 1) * 1e6
            )
            results[name] = result
        finally:
            stop(proc)
    return results


def oip_lines(results: dict[str, Any]) -> list[str]:
    columns = ("service", "server", "conns", "req/s", "p50 ms", "p99 ms", "errors")
    lines = ["{:<7} {:<15} {:>5} {:>10} {:>8} {:>8} {:>7}".format(*columns)]
    for service in ("noop", "model"):
        for name, by_conn in results.get(service, {}).items():
            for connections, r in by_conn.items():
                lines.append(
                    f"{service:<7} {name:<15} {connections:>5} {r['rps']:>10,.0f} "
                    f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['errors']:>7.0f}"
                )
    for service, triton_goal in (("noop", 5.0), ("model", 2.0)):
        by_server = results.get(service, {})
        ours, plain = by_server.get("aqueduct oip", {}), by_server.get("aqueduct plain", {})
        triton = by_server.get("pytriton oip", {})
        for connections in ours:
            share = ours[connections]["rps"] / plain[connections]["rps"]
            line = f"{service} {connections:>3}: oip {share:.2f} of the plain route (goal 0.9)"
            if connections in triton:
                gain = ours[connections]["rps"] / triton[connections]["rps"]
                line += f", {gain:.1f}x Triton (goal {triton_goal:g}x)"
                if connections == "256":
                    p99 = (ours[connections]["p99_ms"], triton[connections]["p99_ms"])
                    line += f", p99 {p99[0]:.2f} vs {p99[1]:.2f} ms (goal <=)"
            lines.append(line)
    for name, big in results.get("4 MiB", {}).items():
        lines.append(
            f"4 MiB FP32 round trips, {name}: {big['wrk_mb_s']:,.0f} MB/s of tensor by wrk "
            f"(p50 {big['wrk_p50_ms']:.2f} ms; goal >= 1000 for ours), "
            f"{big['tritonclient_mb_s']:,.0f} MB/s through tritonclient's own client"
        )
    return lines


def stream_lines(results: dict[str, Any]) -> list[str]:
    columns = ("stream", "tokens/s", "ttft p50", "ttft p99", "front µs", "errors")
    lines = ["{:<16} {:>10} {:>9} {:>9} {:>9} {:>7}".format(*columns)]
    for name, r in results.items():
        # LitServe's work is in processes of its own: only aqueduct's front is measured
        front = r["front_us_per_token"] if name.startswith("aqueduct") else float("nan")
        lines.append(
            f"{name:<16} {r['tokens_per_s']:>10,.0f} {r['ttft_p50_ms']:>9.2f} "
            f"{r['ttft_p99_ms']:>9.2f} {front:>9.2f} {r['errors']:>7.0f}"
        )
    ours, plain = results.get("aqueduct openai"), results.get("aqueduct sse")
    if ours and plain:
        share = ours["tokens_per_s"] / plain["tokens_per_s"]
        ttft = ours["ttft_p50_ms"] - plain["ttft_p50_ms"]
        lines.append(
            f"openai: {share:.2f} of the plain SSE route's tokens/s (goal 0.95), time to first "
            f"token p50 {ttft:+.2f} ms from it (goal within 1 ms)"
        )
    lit = results.get("litserve openai")
    if ours and lit:
        lines.append(
            f"openai: {ours['tokens_per_s'] / lit['tokens_per_s']:.1f}x LitServe OpenAISpec's "
            "tokens/s (goal 3x)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--pytriton-python", default=os.environ.get("PYTRITON_PYTHON"))
    parser.add_argument("--litserve-python", default=os.environ.get("LITSERVE_PYTHON"))
    parser.add_argument("--report", default=str(FOLDER), help="folder for the report")
    parser.add_argument("--only", choices=["oip", "stream"])
    args = parser.parse_args()
    folder = Path(args.report)
    folder.mkdir(parents=True, exist_ok=True)
    report = Report("protocols", "make bench-http")
    if args.only in (None, "oip"):
        report.data["oip"] = oip_stage(args.pytriton_python, args.seconds, folder)
        report.section("oip", oip_lines(report.data["oip"]))
    if args.only in (None, "stream"):
        report.data["stream"] = stream_stage(args.litserve_python, args.seconds)
        report.section("stream", stream_lines(report.data["stream"]))
    if args.only is None:
        report.write(folder)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main()
