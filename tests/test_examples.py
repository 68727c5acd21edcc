"""The examples in examples/ run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_demo_serves_real_requests_and_reports_figures():
    env = {**os.environ, "DEMO_REQUESTS": "320", "DEMO_CONCURRENCY": "8"}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "requests:   320 (0 errors)" in out.stdout
    assert "throughput:" in out.stdout and "p99" in out.stdout


def test_digits_demo_serves_a_real_model():
    pytest.importorskip("sklearn")
    env = {**os.environ, "DEMO_REQUESTS": "300", "DEMO_CONCURRENCY": "8"}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "digits" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    accuracy = float(out.stdout.split("accuracy:")[1].split("%")[0])
    assert accuracy > 90, out.stdout
    assert "(0 errors)" in out.stdout and "p99" in out.stdout
