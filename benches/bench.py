"""`make bench`: the same workloads against this package and (with
--upstream PYTHON) upstream aqueduct 1.15, in one run; prints ratios.

The headline is web-shaped (``web_workloads.py``): every call a new asyncio
task, made by 32 connection loops (1,024 for the overload), task and handler
classes in the script's ``__main__``; it reports CPU per task in the caller's process
(beyond the bare harness) and in the workers beside the rates. The
long-lived caller loops of ``workloads.py`` follow as secondary figures.

Each workload runs in a fresh interpreter so flows, caches and processes
never leak from one measurement into the next; every figure is the median
of ``--repeat`` runs, ours and upstream's alternating so both see the same
machine. Writes ``bench-report/bench.json`` (``report.py``) and the plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from report import Report

HERE = Path(__file__).parent

#: (workload, metric, higher_is_better, target ratio ours/upstream or None)
Metric = tuple[str, str, bool, float | None]

HEADLINE: list[Metric] = [
    ("web_latency", "p50_us", False, 12.0),
    ("web_latency", "p99_us", False, None),
    ("web_1step", "tasks_per_s", True, 6.0),
    ("web_1step", "caller_cpu_us", False, None),
    ("web_1step", "caller_beyond_harness_us", False, 10.0),
    ("web_1step", "worker_cpu_us", False, 8.0),
    ("web_3step", "tasks_per_s", True, 6.0),
    ("web_3step", "caller_beyond_harness_us", False, 10.0),
    ("web_3step", "worker_cpu_us", False, 8.0),
    ("web_batch32", "tasks_per_s", True, 6.0),
    ("web_batch32", "caller_beyond_harness_us", False, 10.0),
    ("web_batch32", "worker_cpu_us", False, 8.0),
    ("web_batch_fill", "fill", True, None),
    ("web_batch_fill", "mean_batch", True, None),
    ("web_overload_1024", "tasks_per_s", True, None),
    ("web_main_vs_module", "main_tasks_per_s", True, None),
    ("web_main_vs_module", "module_tasks_per_s", True, None),
    ("web_metrics", "on_tasks_per_s", True, None),
    ("web_metrics", "off_tasks_per_s", True, None),
]

SECONDARY: list[Metric] = [
    ("latency_1step", "p50_us", False, None),
    ("latency_1step", "p99_us", False, None),
    ("throughput_1step", "tasks_per_s", True, None),
    ("throughput_3step", "tasks_per_s", True, None),
    ("throughput_batch32", "tasks_per_s", True, None),
    ("overload_1024", "tasks_per_s", True, None),
    ("overload_1024", "errors", False, None),
    ("array_8mb", "median_ms", False, 10.0),
    ("share_8mb", "median_ms", False, 5.0),
    ("array_64mb", "median_ms", False, 10.0),
    ("share_64mb", "median_ms", False, None),
]

#: The generative workload (``generative.py``): upstream cannot stream.
GENERATIVE = ["gen_static32", "gen_continuous32", "gen_continuous64"]

#: The bursty workload (``burst.py``): upstream has no elastic steps; and a
#: handler replaced under load (``swap.py``), which upstream cannot do.
BURSTY = ["burst_fixed", "burst_elastic", "swap"]

#: Workloads that tell something of this package only (upstream is not run).
OURS_ONLY = {"web_metrics", *GENERATIVE, *BURSTY}

#: Goals that are not ratios to upstream.
BATCH_FILL_GOAL = 0.95
MEAN_BATCH_GOAL = 31.0
OVERLOAD_SHARE_GOAL = 0.8
MAIN_VS_MODULE_GOAL = 0.05
METRICS_COST_GOAL = 0.05
CONTINUOUS_GAIN_GOAL = 2.0
#: Time to first token, beyond one decoding iteration of the full set.
TTFT_SLACK_MS = 1.0
STREAM_CALLER_GOAL_US = 5.0
#: An elastic step's p99 during a burst, against the same step fixed at its max.
BURST_P99_GOAL = 1.3


def command(python: str, workload: str, scale: float) -> list[str]:
    """The command line of one run of ``workload``."""
    if workload.startswith("gen_"):
        return [python, str(HERE / "generative.py"), workload.removeprefix("gen_"), str(scale)]
    if workload.startswith("burst_"):
        return [python, str(HERE / "burst.py"), workload.removeprefix("burst_"), str(scale)]
    if workload == "swap":
        return [python, str(HERE / "swap.py"), str(scale)]
    script = "web_workloads.py" if workload.startswith("web_") else "workloads.py"
    return [python, str(HERE / script), workload, str(scale)]


def run(python: str, workload: str, scale: float, timeout: float) -> dict[str, float]:
    """One workload in a fresh interpreter; a run that fails or overruns
    ``timeout`` (upstream does, under overload) reports ``failed``."""
    proc = subprocess.Popen(
        command(python, workload, scale),
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
    if proc.returncode != 0:
        print(f"  {workload} failed under {python}:\n{stderr[-2000:]}", file=sys.stderr)
        return {"failed": 1.0}
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    if any("failed" in r for r in runs):
        return {"failed": 1.0}  # a collapse does not get better by repeating it
    # counts of what must never happen: the worst run counts, not the median
    worst = ("failed_calls", "old_after_swap")
    return {
        key: (max if key in worst else statistics.median)(r[key] for r in runs) for key in runs[0]
    }


def measure(
    workloads: list[str], pythons: dict[str, str], args: argparse.Namespace
) -> dict[str, dict[str, dict[str, float]]]:
    """``{package: {workload: medians}}``, the packages' runs alternating."""
    results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in pythons}
    for workload in workloads:
        print(f"running {workload} ...", file=sys.stderr, flush=True)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in pythons}
        for _ in range(max(1, args.repeat)):
            for name, python in pythons.items():
                if name != "aqueduct" and workload in OURS_ONLY:
                    continue
                if runs[name] and "failed" in runs[name][-1]:
                    continue
                runs[name].append(run(python, workload, args.scale, args.timeout))
        for name in pythons:
            if runs[name]:
                results[name][workload] = medians(runs[name])
    return results


def ratio(ours: float, theirs: float, higher: bool) -> float:
    if not (ours and theirs) or math.isnan(ours) or math.isnan(theirs):
        return float("nan")
    return ours / theirs if higher else theirs / ours


def table(
    metrics: list[Metric],
    ours: dict[str, dict[str, float]],
    theirs: dict[str, dict[str, float]] | None,
    missed: list[str],
) -> list[str]:
    header = f"{'workload':<27} {'metric':<25} {'aqueduct':>11}"
    if theirs is not None:
        header += f" {'upstream':>11} {'ratio':>8} {'target':>7}"
    lines = [header, "-" * len(header)]
    for workload, metric, higher, target in metrics:
        if workload not in ours:
            continue
        value = ours[workload].get(metric, float("nan"))
        line = f"{workload:<27} {metric:<25} {value:>11,.1f}"
        if theirs is not None:
            base = theirs.get(workload, {}).get(metric, float("nan"))
            r = ratio(value, base, higher)
            goal = f"{target:.0f}x" if target else ""
            line += f" {base:>11,.1f} {r:>7.1f}x {goal:>7}"
            if target and not r >= target:
                missed.append(f"{workload}.{metric}: {r:.1f}x < {target:.0f}x")
        lines.append(line)
    return lines


def goals(ours: dict[str, dict[str, float]], missed: list[str]) -> list[str]:
    """The goals that are not ratios to upstream."""
    lines = []
    fill = ours.get("web_batch_fill", {})
    if "fill" in fill:
        lines.append(
            f"batch fill: {fill['fill']:.1%} of ideal, mean batch {fill['mean_batch']:.1f} of 32"
            f" (goals: {BATCH_FILL_GOAL:.0%}, {MEAN_BATCH_GOAL:.0f})"
        )
        if fill["fill"] < BATCH_FILL_GOAL or fill["mean_batch"] < MEAN_BATCH_GOAL:
            missed.append("web_batch_fill")
    single = ours.get("web_1step", {}).get("tasks_per_s")
    crowd = ours.get("web_overload_1024", {}).get("tasks_per_s")
    if single and crowd:
        share = crowd / single
        goal = f"goal: {OVERLOAD_SHARE_GOAL:.0%}"
        lines.append(f"1,024 callers keep {share:.0%} of the 32-caller rate ({goal})")
        if share < OVERLOAD_SHARE_GOAL:
            missed.append("web_overload_1024 share")
    classes = ours.get("web_main_vs_module", {})
    if "gap" in classes:
        cpu = {k: classes[f"{k}_caller_cpu_us"] for k in ("main", "module")}
        workers = {k: classes[f"{k}_worker_cpu_us"] for k in ("main", "module")}
        lines.append(
            f"__main__ classes vs module classes: {classes['gap']:+.1%} of throughput"
            f" (goal: within {MAIN_VS_MODULE_GOAL:.0%}); CPU per task, caller"
            f" {cpu['main']:.1f} vs {cpu['module']:.1f} µs,"
            f" workers {workers['main']:.1f} vs {workers['module']:.1f} µs"
        )
        if abs(classes["gap"]) > MAIN_VS_MODULE_GOAL:
            missed.append("__main__ vs module classes")
    harness = ours.get("web_1step", {}).get("harness_cpu_us")
    if harness:
        lines.append(
            f"the bare harness (connection loops, a task per call, request object) costs"
            f" {harness:.1f} µs of CPU per call, not counted in caller_beyond_harness_us"
        )
    metrics = ours.get("web_metrics", {})
    if "gap" in metrics:
        cost = -metrics["gap"]
        lines.append(f"metrics cost {cost:+.1%} of throughput (goal: < {METRICS_COST_GOAL:.0%})")
        if cost > METRICS_COST_GOAL:
            missed.append("metrics cost")
    return lines


def generative(ours: dict[str, dict[str, float]], missed: list[str]) -> list[str]:
    """The generative table and its goals (see ``generative.py``)."""
    from generative import CALLERS, ITERATION_S, PER_SEQUENCE_S

    rows = [(w, ours[w]) for w in GENERATIVE if w in ours and "failed" not in ours[w]]
    if not rows:
        return []
    lines = [
        f"generative (decode emulator, {CALLERS} streaming callers, a new task per request):",
        f"{'mode':<18} {'tokens/s':>9} {'ttft p50 ms':>12} {'ttft p99 ms':>12}"
        f" {'caller µs/part':>15} {'beyond harness':>15}",
    ]
    for workload, r in rows:
        lines.append(
            f"{workload.removeprefix('gen_'):<18} {r['tokens_per_s']:>9,.0f}"
            f" {r['ttft_p50_ms']:>12.1f} {r['ttft_p99_ms']:>12.1f}"
            f" {r['caller_cpu_per_part_us']:>15.1f} {r['caller_beyond_harness_us']:>15.1f}"
        )
    static = ours.get("gen_static32", {}).get("tokens_per_s")
    for workload, size in (("gen_continuous32", 32), ("gen_continuous64", 64)):
        r = ours.get(workload)
        if not (r and static) or "failed" in r:
            continue
        gain = r["tokens_per_s"] / static
        iteration_ms = (ITERATION_S + PER_SEQUENCE_S * min(size, CALLERS)) * 1e3
        lines.append(
            f"{workload.removeprefix('gen_')}: {gain:.2f}x the tokens/s of static32"
            f" (goal {CONTINUOUS_GAIN_GOAL:.0f}x); p50 time to first token"
            f" {r['ttft_p50_ms']:.1f} ms vs one iteration {iteration_ms:.1f} ms"
            f" + {TTFT_SLACK_MS:.0f} (goal)"
        )
        if workload == "gen_continuous64":
            if gain < CONTINUOUS_GAIN_GOAL:
                missed.append(f"{workload} tokens/s {gain:.2f}x")
            if r["ttft_p50_ms"] > iteration_ms + TTFT_SLACK_MS:
                missed.append(f"{workload} p50 ttft")
            if r["caller_beyond_harness_us"] > STREAM_CALLER_GOAL_US:
                missed.append(f"{workload} caller µs/part")
    return lines


def bursty(ours: dict[str, dict[str, float]], missed: list[str]) -> list[str]:
    """The elastic step against the same step fixed at its max (``burst.py``)."""
    from burst import BURST_S, CALLERS, MAX, SHRINK_AFTER, WORK_S

    fixed, elastic = ours.get("burst_fixed"), ours.get("burst_elastic")
    if not (fixed and elastic) or "failed" in fixed or "failed" in elastic:
        return []
    lines = [
        f"bursty (idle, {CALLERS} callers for {BURST_S:.0f} s, idle;"
        f" {WORK_S * 1e3:.0f} ms a task):",
        f"{'step':<24} {'tasks/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'most workers':>13}",
    ]
    for name, r in ((f"fixed nprocs={MAX}", fixed), (f"elastic (1, {MAX})", elastic)):
        lines.append(
            f"{name:<24} {r['tasks_per_s']:>8,.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}"
            f" {r['most_workers']:>13.0f}"
        )
    ratio = elastic["p99_ms"] / fixed["p99_ms"]
    back = elastic["back_to_min_s"]
    lines.append(
        f"elastic p99 {ratio:.2f}x fixed (goal {BURST_P99_GOAL}x); back to 1 worker"
        f" {back:.1f} s after the burst (idle period {SHRINK_AFTER:.0f} s)"
    )
    if ratio > BURST_P99_GOAL:
        missed.append(f"burst p99 {ratio:.2f}x")
    if not back <= SHRINK_AFTER + 1.0:
        missed.append("burst back to min")
    return lines


def swapped(ours: dict[str, dict[str, float]], missed: list[str]) -> list[str]:
    """A handler replaced under load (``swap.py``)."""
    from swap import CALLERS, LOAD_S

    r = ours.get("swap")
    if not r or "failed" in r:
        return []
    if r["failed_calls"] or r["old_after_swap"]:
        missed.append(f"swap: {r['failed_calls']:.0f} failed, {r['old_after_swap']:.0f} old after")
    return [
        f"handler replaced under {CALLERS} callers (new on_start {LOAD_S} s):"
        f" swap {r['swap_s']:.2f} s, {r['failed_calls']:.0f} calls failed (goal 0),"
        f" {r['during']:.0f} answered during it, {r['old_after_swap']:.0f} old answers after;"
        f" longest time without an answer {r['longest_gap_ms']:.1f} ms;"
        f" p99 {r['p99_before_ms']:.1f} ms before, {r['p99_during_ms']:.1f} ms during",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", help="python with aqueduct==1.15.0 installed")
    parser.add_argument("--scale", type=float, default=1.0, help="workload size factor")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per workload run")
    parser.add_argument("--report", default="bench-report", help="folder for the report")
    parser.add_argument("--only", help="comma-separated workload name prefixes to run")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per workload; the median of each figure counts"
    )
    args = parser.parse_args()

    def names(metrics: list[Metric]) -> list[str]:
        return list(dict.fromkeys(w for w, *_ in metrics))

    workloads = names(HEADLINE) + names(SECONDARY) + ["concurrency_sweep", "batch_sweep"]
    workloads += GENERATIVE + BURSTY
    if args.only:
        workloads = [w for w in workloads if any(w.startswith(p) for p in args.only.split(","))]
    pythons = {"aqueduct": sys.executable}
    if args.upstream:
        pythons["upstream"] = args.upstream
    results = measure(workloads, pythons, args)
    ours, theirs = results["aqueduct"], results.get("upstream")

    missed: list[str] = []
    report = Report("bench", "make bench")
    report.data = {"aqueduct": ours, "upstream": theirs or {}}
    web = table(HEADLINE, ours, theirs, missed) + goals(ours, missed)
    report.section("web", ["web-shaped (a new asyncio task per call, classes in __main__):", *web])
    secondary = table(SECONDARY, ours, theirs, missed)
    title = "secondary (32 long-lived caller loops; big payloads):"
    report.section("secondary", [title, *secondary])
    for key, lines in (
        ("generative", generative(ours, missed)),
        ("bursty", bursty(ours, missed)),
        ("swap", swapped(ours, missed)),
    ):
        if lines:
            report.section(key, lines)
    summary = []
    errors = {w: r.get("errors", 0) for w, r in ours.items() if r.get("errors")}
    if errors:
        summary.append(f"errors: {errors}")
    if theirs is not None:
        summary.append("ratio = how many times better than upstream (speed-up, latency or CPU cut)")
    summary.append("goals missed: " + ("; ".join(missed) if missed else "none"))
    report.section("summary", summary)
    folder = Path(args.report)
    report.write(folder)
    plot(folder, ours, theirs or {})


def _series(result: dict[str, float], prefix: str) -> tuple[list[int], list[float]]:
    points = sorted(
        (int(key.split("@")[1]), value) for key, value in result.items() if key.startswith(prefix)
    )
    return [x for x, _ in points], [y for _, y in points]


def plot(
    folder: Path,
    ours: dict[str, dict[str, float]],
    theirs: dict[str, dict[str, float]],
) -> None:
    """The sweeps' PNG plots, when matplotlib is there."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(install matplotlib for the plots)", file=sys.stderr)
        return
    plots = [
        ("concurrency_sweep", "p50_us@", "callers", "p50 latency (µs)", "latency_vs_callers"),
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


if __name__ == "__main__":
    main()
