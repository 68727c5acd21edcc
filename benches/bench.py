"""`make bench`: the same workloads against this package and (with
--upstream PYTHON) upstream aqueduct 1.15, in one run; prints ratios.

Each workload runs in a fresh interpreter (benches/workloads.py) so flows,
caches and processes never leak from one measurement into the next.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

WORKLOADS = Path(__file__).with_name("workloads.py")

#: (workload, metric, higher_is_better, target ratio ours/upstream or None)
METRICS = [
    ("latency_1step", "p50_us", False, 10.0),
    ("latency_1step", "p99_us", False, None),
    ("throughput_1step", "tasks_per_s", True, 8.0),
    ("throughput_1step_nometrics", "tasks_per_s", True, None),
    ("throughput_3step", "tasks_per_s", True, 8.0),
    ("throughput_batch32", "tasks_per_s", True, 8.0),
    ("overload_1024", "tasks_per_s", True, None),
    ("overload_1024", "errors", False, None),
    ("array_8mb", "median_ms", False, 10.0),
    ("share_8mb", "median_ms", False, 5.0),
    ("array_64mb", "median_ms", False, 10.0),
    ("share_64mb", "median_ms", False, None),
]


def run(python: str, workload: str, scale: float, timeout: float) -> dict[str, float]:
    """One workload in a fresh interpreter; a run that fails or overruns
    ``timeout`` (upstream does, under overload) reports NaN figures."""
    try:
        out = subprocess.run(
            [python, str(WORKLOADS), workload, str(scale)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        print(f"  {workload} under {python}: no result within {timeout:.0f} s", file=sys.stderr)
        return {"failed": 1.0}
    if out.returncode != 0:
        print(f"  {workload} failed under {python}:\n{out.stderr[-2000:]}", file=sys.stderr)
        return {"failed": 1.0}
    return json.loads(out.stdout.strip().splitlines()[-1])


def median_run(python: str, workload: str, args: argparse.Namespace) -> dict[str, float]:
    """Runs a workload ``--repeat`` times (alternating with nothing else, so
    both packages see the same machine) and keeps each figure's median."""
    runs = []
    for _ in range(max(1, args.repeat)):
        runs.append(run(python, workload, args.scale, args.timeout))
        if "failed" in runs[-1]:
            return {"failed": 1.0}  # a collapse does not get better by repeating it
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", help="python with aqueduct==1.15.0 installed")
    parser.add_argument("--scale", type=float, default=1.0, help="workload size factor")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per workload run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per workload; the median of each figure counts"
    )
    args = parser.parse_args()

    workloads = sorted({w for w, *_ in METRICS}, key=[w for w, *_ in METRICS].index)
    ours: dict[str, dict[str, float]] = {}
    theirs: dict[str, dict[str, float]] = {}
    for workload in workloads:
        print(f"running {workload} ...", file=sys.stderr, flush=True)
        ours[workload] = median_run(sys.executable, workload, args)
        if args.upstream:
            theirs[workload] = median_run(args.upstream, workload, args)

    header = f"{'workload':<27} {'metric':<12} {'aqueduct':>12}"
    if args.upstream:
        header += f" {'upstream':>12} {'ratio':>8} {'target':>8}"
    print(header)
    print("-" * len(header))
    missed = []
    for workload, metric, higher, target in METRICS:
        value = ours[workload].get(metric, float("nan"))
        line = f"{workload:<27} {metric:<12} {value:>12,.1f}"
        if args.upstream:
            base = theirs[workload].get(metric, float("nan"))
            ratio = (value / base if higher else base / value) if base and value else float("nan")
            goal = f"{target:.0f}x" if target else ""
            line += f" {base:>12,.1f} {ratio:>7.1f}x {goal:>8}"
            if target and not ratio >= target:
                missed.append(f"{workload}.{metric}: {ratio:.1f}x < {target:.0f}x")
        print(line)
    errors = {w: r.get("errors", 0) for w, r in ours.items() if r.get("errors")}
    if errors:
        print(f"errors: {errors}")
    metrics_on = ours.get("throughput_1step", {}).get("tasks_per_s")
    metrics_off = ours.get("throughput_1step_nometrics", {}).get("tasks_per_s")
    if metrics_on and metrics_off:
        print(f"metrics cost {1 - metrics_on / metrics_off:+.1%} of throughput (goal: < 5%)")
    overload = ours.get("overload_1024", {}).get("tasks_per_s")
    single = ours.get("throughput_1step", {}).get("tasks_per_s")
    if overload and single:
        share = overload / single
        print(f"overload (1024 callers) keeps {share:.0%} of the 32-caller throughput (goal: 80%)")
    if args.upstream:
        print("ratio = how many times better than upstream (speed-up or latency cut)")
        print("targets missed: " + ("; ".join(missed) if missed else "none"))


if __name__ == "__main__":
    main()
