"""The examples in examples/ run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
