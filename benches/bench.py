"""`make bench`: the same workloads against this package and (with
--upstream PYTHON) upstream aqueduct 1.15, in one run; prints ratios.

Each workload runs in a fresh interpreter (benches/workloads.py) so flows,
caches and processes never leak from one measurement into the next.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
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
    proc = subprocess.Popen(
        [python, str(WORKLOADS), workload, str(scale)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its workers are in its group: kill them all on a timeout
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        print(f"  {workload} under {python}: no result within {timeout:.0f} s", file=sys.stderr)
        return {"failed": 1.0}
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
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
    parser.add_argument("--report", default="bench-report", help="folder for the report")
    parser.add_argument("--only", help="comma-separated workload name prefixes to run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per workload; the median of each figure counts"
    )
    args = parser.parse_args()

    workloads = sorted({w for w, *_ in METRICS}, key=[w for w, *_ in METRICS].index)
    workloads += ["concurrency_sweep", "batch_sweep"]  # for the report's plots
    if args.only:
        workloads = [w for w in workloads if any(w.startswith(p) for p in args.only.split(","))]
    ours: dict[str, dict[str, float]] = {}
    theirs: dict[str, dict[str, float]] = {}
    for workload in workloads:
        print(f"running {workload} ...", file=sys.stderr, flush=True)
        ours[workload] = median_run(sys.executable, workload, args)
        if args.upstream:
            theirs[workload] = median_run(args.upstream, workload, args)

    lines: list[str] = []
    header = f"{'workload':<27} {'metric':<12} {'aqueduct':>12}"
    if args.upstream:
        header += f" {'upstream':>12} {'ratio':>8} {'target':>8}"
    lines.append(header)
    lines.append("-" * len(header))
    missed = []
    for workload, metric, higher, target in METRICS:
        if workload not in ours:
            continue
        value = ours[workload].get(metric, float("nan"))
        line = f"{workload:<27} {metric:<12} {value:>12,.1f}"
        if args.upstream:
            base = theirs[workload].get(metric, float("nan"))
            ratio = (value / base if higher else base / value) if base and value else float("nan")
            goal = f"{target:.0f}x" if target else ""
            line += f" {base:>12,.1f} {ratio:>7.1f}x {goal:>8}"
            if target and not ratio >= target:
                missed.append(f"{workload}.{metric}: {ratio:.1f}x < {target:.0f}x")
        lines.append(line)
    errors = {w: r.get("errors", 0) for w, r in ours.items() if r.get("errors")}
    if errors:
        lines.append(f"errors: {errors}")
    metrics_on = ours.get("throughput_1step", {}).get("tasks_per_s")
    metrics_off = ours.get("throughput_1step_nometrics", {}).get("tasks_per_s")
    if metrics_on and metrics_off:
        lines.append(f"metrics cost {1 - metrics_on / metrics_off:+.1%} of throughput (goal: < 5%)")
    overload = ours.get("overload_1024", {}).get("tasks_per_s")
    single = ours.get("throughput_1step", {}).get("tasks_per_s")
    if overload and single:
        share = overload / single
        lines.append(
            f"overload (1024 callers) keeps {share:.0%} of the 32-caller throughput (goal: 80%)"
        )
    if args.upstream:
        lines.append("ratio = how many times better than upstream (speed-up or latency cut)")
        lines.append("targets missed: " + ("; ".join(missed) if missed else "none"))
    print("\n".join(lines))
    write_report(Path(args.report), lines, ours, theirs)


def _series(result: dict[str, float], prefix: str) -> tuple[list[int], list[float]]:
    points = sorted(
        (int(key.split("@")[1]), value) for key, value in result.items() if key.startswith(prefix)
    )
    return [x for x, _ in points], [y for _, y in points]


def write_report(
    folder: Path,
    lines: list[str],
    ours: dict[str, dict[str, float]],
    theirs: dict[str, dict[str, float]],
) -> None:
    """report.md with the table, and PNG plots when matplotlib is there."""
    folder.mkdir(parents=True, exist_ok=True)
    text = ["# aqueduct benchmark", "", "```", *lines, "```", ""]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        text.append("(install matplotlib for the plots)")
    else:
        plots = [
            (
                "concurrency_sweep",
                "p50_us@",
                "callers",
                "p50 latency (µs)",
                "latency_vs_concurrency",
            ),
            ("batch_sweep", "tasks_per_s@", "batch size", "tasks/s", "throughput_vs_batch_size"),
        ]
        for workload, prefix, xlabel, ylabel, name in plots:
            figure, axes = plt.subplots(figsize=(6, 4))
            for label, results in (("aqueduct", ours), ("upstream 1.15", theirs)):
                xs, ys = _series(results.get(workload, {}), prefix)
                if xs:
                    axes.plot(xs, ys, marker="o", label=label)
            axes.set_xscale("log", base=2)
            axes.set_yscale("log")
            axes.set_xlabel(xlabel)
            axes.set_ylabel(ylabel)
            axes.set_title(name.replace("_", " "))
            axes.grid(True, which="both", alpha=0.3)
            axes.legend()
            figure.tight_layout()
            figure.savefig(folder / f"{name}.png", dpi=110)
            plt.close(figure)
            text.append(f"![{name}]({name}.png)")
    (folder / "report.md").write_text("\n".join(text) + "\n")
    (folder / "results.json").write_text(
        json.dumps({"aqueduct": ours, "upstream": theirs}, indent=2)
    )
    print(f"report: {folder / 'report.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
