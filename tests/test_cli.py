"""``aqueduct serve module:attr``, started as a user would: the console
script the package installs, and ``python -m aqueduct``. Every wait is
bounded."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import WAIT, eventually
from test_http import call
from test_http_hostile import _closed_by_server

EXAMPLES = Path(__file__).parent.parent / "examples"
#: The console script pip installed beside this interpreter.
SCRIPT = Path(sys.executable).parent / "aqueduct"


@contextmanager
def cli(
    *args: str, module: bool = False, **env: str
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """Runs ``aqueduct serve ARGS`` (port 0); yields the port it prints and
    the process; stops it with SIGTERM after (it must exit 0)."""
    command = [sys.executable, "-m", "aqueduct"] if module else [str(SCRIPT)]
    proc = subprocess.Popen(
        [*command, "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "AQUEDUCT_DRAIN_DELAY": "0", **env},
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "serving" in line, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        yield int(line.rsplit(":", 1)[1]), proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=WAIT, check=False
    )


def test_help_explains_every_option_and_its_variable():
    done = run("serve", "--help")
    assert done.returncode == 0
    for flag, env in [
        ("--host", "AQUEDUCT_HOST"),
        ("--port", "AQUEDUCT_PORT"),
        ("--threads", "AQUEDUCT_THREADS"),
        ("--timeout", "AQUEDUCT_TIMEOUT"),
        ("--body-limit", "AQUEDUCT_BODY_LIMIT"),
        ("--header-timeout", "AQUEDUCT_HEADER_TIMEOUT"),
        ("--body-timeout", "AQUEDUCT_BODY_TIMEOUT"),
        ("--idle-timeout", "AQUEDUCT_IDLE_TIMEOUT"),
        ("--write-timeout", "AQUEDUCT_WRITE_TIMEOUT"),
        ("--max-connections", "AQUEDUCT_MAX_CONNECTIONS"),
        ("--access-log", "AQUEDUCT_ACCESS_LOG"),
        ("--app-dir", "AQUEDUCT_APP_DIR"),
        ("--drain-delay", "AQUEDUCT_DRAIN_DELAY"),
        ("--graceful-timeout", "AQUEDUCT_GRACEFUL_TIMEOUT"),
        ("--reuse-port", "AQUEDUCT_REUSE_PORT"),
    ]:
        assert flag in done.stdout and env in done.stdout, flag
    assert "MODULE:ATTR" in done.stdout and "Service" in done.stdout


def test_every_serve_option_is_in_the_docs_limits_table_or_the_clis_option_list():
    from aqueduct._cli import OPTIONS

    guides = Path(__file__).parent.parent / "docs" / "guides"
    pages = (guides / "http-front.rst").read_text() + (guides / "cli-deployment.rst").read_text()
    for option in OPTIONS:
        assert option.flag in pages, option.flag


def test_the_deploy_recipes_name_real_variables_paths_and_a_long_enough_grace():
    import re

    from aqueduct import http
    from aqueduct._cli import ENV_PREFIX, OPTIONS

    deploy = Path(__file__).parent.parent / "deploy"
    manifest = (deploy / "kubernetes.yaml").read_text()
    dockerfile = (deploy / "Dockerfile").read_text()
    variables = {option.env for option in OPTIONS} | {ENV_PREFIX + "APP_DIR", "AQUEDUCT_API_KEYS"}
    named = set(re.findall(r"AQUEDUCT_[A-Z_]+", manifest + dockerfile))
    assert named and named <= variables, named - variables
    probes = re.findall(
        r"(startupProbe|livenessProbe|readinessProbe):.*?path: (/\w+)", manifest, re.S
    )
    assert dict(probes) == {
        "startupProbe": "/live",
        "livenessProbe": "/live",
        "readinessProbe": "/ready",
    }
    assert {"/live", "/ready"} <= set(http.RESERVED_PATHS)
    grace = int(re.search(r"terminationGracePeriodSeconds: (\d+)", manifest).group(1))
    drain = float(re.search(r"AQUEDUCT_DRAIN_DELAY, value: \"([\d.]+)\"", manifest).group(1))
    finish = float(re.search(r"AQUEDUCT_GRACEFUL_TIMEOUT, value: \"([\d.]+)\"", manifest).group(1))
    assert grace > drain + finish
    assert "maturin build" in dockerfile and "aqueduct serve" in dockerfile


def test_the_example_service_is_served_by_the_console_script(tmp_path):
    log = tmp_path / "access.log"
    with cli("--app-dir", str(EXAMPLES), "--access-log", str(log), "http_service:service") as (
        port,
        _,
    ):
        status, _, body = call(port, {"values": [1.0, 2.0, 3.0]})
        assert status == 200 and "score" in json.loads(body)
        assert call(port, {"values": []})[0] == 400
        eventually(lambda: log.exists() and len(log.read_text().splitlines()) == 2)


def test_the_streaming_example_streams_through_python_dash_m():
    app_dir = str(EXAMPLES / "generate")
    with cli("--app-dir", app_dir, "--timeout", "60", "serve_http:service", module=True) as (
        port,
        _,
    ):
        prompt = {"prompt": "The ", "max_tokens": 12, "seed": 1}
        status, headers, body = call(port, prompt, path="/generate")
        assert status == 200 and headers["content-type"] == "text/event-stream"
        events = body.decode().strip().split("\n\n")
        assert len(events) == 13 and json.loads(events[-1].removeprefix("data: "))["tokens"] == 12


def test_limits_come_from_the_environment_and_a_flag_beats_its_variable():
    env = {"AQUEDUCT_HEADER_TIMEOUT": "0.3", "AQUEDUCT_BODY_LIMIT": "10"}
    args = ("--app-dir", str(EXAMPLES), "--body-limit", "100000", "http_service:service")
    with cli(*args, **env) as (port, _):
        assert call(port, {"values": [1.0] * 10})[0] == 200  # over 10 bytes: the flag won
        sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        with sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\n")  # and nothing more
            eventually(lambda: _closed_by_server(sock), within=3.0, what="closed at 0.3 s")


def test_api_keys_come_from_the_environment():
    with cli("--app-dir", str(EXAMPLES), "http_service:service", AQUEDUCT_API_KEYS="abc") as (
        port,
        _,
    ):
        assert call(port, {"values": [1.0]})[0] == 401
        assert call(port, {"values": [1.0]}, headers={"Authorization": "Bearer abc"})[0] == 200


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("http_service", "is not MODULE:ATTR"),
        ("no_such_module:service", "no module 'no_such_module'"),
        ("http_service:nothing", "has no attribute 'nothing'"),
        ("http_service:Model", "not an aqueduct.http.Service"),
    ],
)
def test_a_target_that_names_no_service_is_a_clear_usage_error(target, says):
    done = run("serve", "--app-dir", str(EXAMPLES), target)
    assert done.returncode == 2
    assert says in done.stderr, done.stderr
