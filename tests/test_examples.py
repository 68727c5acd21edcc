"""The examples in examples/ run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
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
