"""``make bench-slo``: goodput at a latency objective under open-loop load.

Every framework serves the same model emulator (``emulator.py``: 2 ms +
0.2 ms per item, batches of at most 32 — 3,810 requests/s at most) and is
held to the same objective (50 ms). Requests arrive at Poisson times at
the same absolute rates for every framework, from 25 % to 200 % of the
model's limit, whether or not earlier ones were answered; each one's
latency counts from its scheduled send time (no coordinated omission).

* Over HTTP, the load comes from ``openloop`` (``benches/openloop``, a
  small Rust tool on one thread: Python could not hold 7,600 requests/s on
  2 cores beside the server, and wrk keeps a closed loop per connection).
  Frameworks: aqueduct's Rust front batching for the objective, the same
  with upstream's fixed 5 ms wait, upstream aqueduct 1.15 behind aiohttp,
  mosec (batches of 32, 5 ms wait), Triton through PyTriton (dynamic
  batcher, 5 ms max queue delay) and BentoML (``batchable=True``,
  ``max_latency_ms`` = the objective), each in its own venv when there.
* Over the Python API (``python_api.py``): a new asyncio task per request
  in the caller's process; aqueduct with the objective, with the fixed
  wait, and upstream 1.15.

Per point: goodput (answered within the objective per second), p50/p99/
p99.9 of the answered, rejected (429/503, with their p99), late, failed.
After the sweep each framework also gets 1.5x aqueduct's rate at the
objective. Prints the tables and the targets of issue 31, writes
``bench-report/slo.json`` (and ``.txt``) and the plots ``bench-report/slo.png`` and
``bench-report/slo-python-api.png``.

    python benches/slo/sweep.py --upstream-python .venv-upstream/bin/python \\
        --mosec-python .venv-mosec/bin/python --pytriton-python .venv-pytriton/bin/python \\
        --bentoml-python .venv-bentoml/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent / "http"))
sys.path.insert(0, str(HERE.parent))

from emulator import LIMIT, OBJECTIVE_S  # noqa: E402
from points import at_objective, point_at  # noqa: E402
from protocols import launch, pytriton_env, warm_up  # noqa: E402
from report import Report  # noqa: E402
from run import PORT, stop  # noqa: E402

#: Offered rates, as shares of the model's limit: the same absolute rates
#: for every framework.
SHARES = (0.1, 0.25, 0.5, 0.75, 0.85, 0.9, 0.95, 1.0, 1.1, 1.5, 2.0)
RATES = [round(LIMIT * share) for share in SHARES]
OPENLOOP = ROOT / "target" / "release" / "openloop"
JSON = {"Content-Type": "application/json"}
ITEM = [0.5] * 8
OIP_BODY = {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": ITEM}]}


@dataclass
class Http:
    """A framework's server: its command, where it takes requests, and how."""

    command: list[str]
    path: str
    body: bytes
    env: dict[str, str] = field(default_factory=dict)


def frameworks(args: argparse.Namespace) -> dict[str, Http]:
    json_item = json.dumps(ITEM).encode()
    port = ["--port", str(PORT)]
    found = {
        "aqueduct objective": Http(
            [sys.executable, str(HERE / "aqueduct_front.py"), "--mode", "objective", *port],
            "/inference",
            json_item,
        ),
        "aqueduct fixed 5 ms": Http(
            [sys.executable, str(HERE / "aqueduct_front.py"), "--mode", "fixed", *port],
            "/inference",
            json_item,
        ),
    }
    if args.upstream_python:
        found["upstream 1.15 aiohttp"] = Http(
            [args.upstream_python, str(HERE / "upstream_aiohttp.py"), *port],
            "/inference",
            json_item,
        )
    if args.mosec_python:
        found["mosec"] = Http(
            [
                args.mosec_python,
                str(HERE.parent / "http" / "mosec_service.py"),
                "--service",
                "model",
                *port,
                "--timeout",
                "10000",
            ],
            "/inference",
            json_item,
        )
    if args.pytriton_python:
        found["Triton (PyTriton)"] = Http(
            [
                args.pytriton_python,
                str(HERE.parent / "http" / "oip_pytriton.py"),
                "--service",
                "model",
                *port,
            ],
            "/v2/models/bench/infer",
            json.dumps(OIP_BODY).encode(),
            pytriton_env(args.pytriton_python),
        )
    if args.bentoml_python:
        bentoml = str(Path(args.bentoml_python).parent / "bentoml")
        found["BentoML"] = Http(
            [bentoml, "serve", "bentoml_service:Model", "--working-dir", str(HERE), *port],
            "/predict",
            json.dumps({"x": [ITEM]}).encode(),
        )
    return found


def openloop(http: Http, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    body = HERE / ".body"
    body.write_bytes(http.body)
    out = subprocess.run(
        [
            str(OPENLOOP),
            "--url",
            f"http://127.0.0.1:{PORT}{http.path}",
            "--body-file",
            str(body),
            "--header",
            "Content-Type: application/json",
            "--rate",
            str(rate),
            "--duration",
            str(seconds),
            "--warmup",
            "1",
            "--objective-ms",
            str(OBJECTIVE_S * 1000),
            "--seed",
            str(seed),
            "--timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    body.unlink()
    return json.loads(out.stdout)


def sweep_http(http: Http, rates: list[int], seconds: float) -> list[dict[str, Any]]:
    proc = launch(http.command, http.env)
    try:
        warm_up(http.path, http.body, JSON, timeout=240)
        openloop(http, 300, 2, 99)  # workers warm, the cost learned
        points = []
        for seed, rate in enumerate(rates):
            points.append(openloop(http, rate, seconds, seed + 1))
            print(f"  {rate:>6}/s: {brief(points[-1])}", file=sys.stderr)
            time.sleep(1.0)
        return points
    finally:
        stop(proc)


def sweep_python(python: str, mode: str, rates: list[int], seconds: float) -> list[dict[str, Any]]:
    out = subprocess.run(
        [
            python,
            str(HERE / "python_api.py"),
            "--mode",
            mode,
            "--rates",
            ",".join(map(str, rates)),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=len(rates) * (seconds + 30) + 120,
        check=True,
        cwd=ROOT,
    )
    points = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for point in points:
        print(f"  {point['rate']:>6.0f}/s: {brief(point)}", file=sys.stderr)
    return points


def brief(p: dict[str, Any]) -> str:
    return (
        f"goodput {p['goodput']:>7.1f}  within {100 * p['within_share']:5.1f} %  "
        f"p99 {p['p99_ms']} ms  rejected {p['rejected']}  failed {p['failed']}"
    )


def table(title: str, results: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = [
        title,
        f"{'framework':<22} {'rate/s':>7} {'goodput':>8} {'in time':>8} {'p50':>8} "
        f"{'p99':>8} {'p99.9':>8} {'rejected':>8} {'rej p99':>8} {'late':>6} {'failed':>6}",
    ]
    for name, points in results.items():
        for p in sorted(points, key=lambda p: p["rate"]):
            ms = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
            share = 100 * p["within_share"]
            lines.append(
                f"{name:<22} {p['rate']:>7.0f} {p['goodput']:>8.1f} {share:>7.1f}% "
                f"{ms(p['p50_ms']):>8} {ms(p['p99_ms']):>8} {ms(p['p999_ms']):>8} "
                f"{p['rejected']:>8} {ms(p['reject_p99_ms']):>8} {p['late']:>6} {p['failed']:>6}"
            )
        lines.append(f"{name:<22} rate at the objective: {at_objective(points):.0f}/s")
    return lines


def targets(results: dict[str, list[dict[str, Any]]], overload: float) -> list[str]:
    ours = at_objective(results["aqueduct objective"])
    peers = {
        n: at_objective(p)
        for n, p in results.items()
        if n in ("mosec", "Triton (PyTriton)", "BentoML")
    }
    lines = []
    best = max(peers.values(), default=0.0)
    if peers:
        lines.append(
            f"rate at the objective: ours {ours:.0f}/s vs best peer {best:.0f}/s "
            f"({max(peers, key=peers.__getitem__)}) = {ours / best if best else float('inf'):.2f}x "
            f"(goal >= 1.15x) {'OK' if ours >= 1.15 * best else 'MISSED'}"
        )
    lines.append(
        f"rate at the objective: {ours:.0f}/s = {ours / LIMIT:.2f} of the model's {LIMIT:.0f}/s "
        f"(goal >= 0.9) {'OK' if ours >= 0.9 * LIMIT else 'MISSED'}"
    )
    mine = point_at(results["aqueduct objective"], overload)
    if mine:
        lines.append(
            f"at {overload:.0f}/s (1.5x): goodput {mine['goodput']:.0f}/s = "
            f"{mine['goodput'] / ours if ours else 0:.2f} of the rate at the objective "
            f"(goal >= 0.9) "
            f"{'OK' if ours and mine['goodput'] >= 0.9 * ours else 'MISSED'}"
        )
        others = {n: point_at(p, overload) for n, p in results.items() if n in peers}
        best_peer = max((p["goodput"] for p in others.values() if p), default=0.0)
        if peers:
            lines.append(
                f"at {overload:.0f}/s: ours {mine['goodput']:.0f}/s vs best peer {best_peer:.0f}/s "
                f"(goal >= 2x) {'OK' if mine['goodput'] >= 2 * best_peer else 'MISSED'}"
            )
        reject = mine["reject_p99_ms"]
        lines.append(
            f"at {overload:.0f}/s: rejects answered in p99 {reject} ms (goal <= 2 ms) "
            f"{'OK' if reject is not None and reject <= 2 else 'MISSED'}"
        )
    return lines


def plot(results: dict[str, list[dict[str, Any]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, goodput) = plt.subplots(1, 2, figsize=(13, 5))
    for name, points in results.items():
        points = sorted(points, key=lambda p: p["rate"])
        rates = [p["rate"] for p in points]
        latency.plot(rates, [p["p99_ms"] or float("nan") for p in points], marker="o", label=name)
        goodput.plot(rates, [p["goodput"] for p in points], marker="o", label=name)
    latency.axhline(OBJECTIVE_S * 1000, color="grey", linestyle="--", label="objective")
    latency.set(
        xlabel="offered load (requests/s)",
        ylabel="p99 of answered (ms)",
        yscale="log",
        title=f"{title}: latency",
    )
    goodput.plot(
        [0, max(RATES)], [0, max(RATES)], color="lightgrey", linestyle=":", label="offered"
    )
    goodput.axhline(LIMIT, color="grey", linestyle="--", label="model's limit")
    goodput.set(
        xlabel="offered load (requests/s)",
        ylabel="answered within 50 ms per s",
        title=f"{title}: goodput",
    )
    for axes in (latency, goodput):
        axes.axvline(LIMIT, color="lightgrey", linewidth=0.8)
        axes.grid(alpha=0.3)
    goodput.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--upstream-python")
    parser.add_argument("--mosec-python")
    parser.add_argument("--pytriton-python")
    parser.add_argument("--bentoml-python")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per point")
    parser.add_argument("--skip-python-api", action="store_true")
    parser.add_argument("--report", default=str(ROOT / "bench-report"))
    args = parser.parse_args()
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    servers = frameworks(args)

    http: dict[str, list[dict[str, Any]]] = {}
    print("aqueduct objective ...", file=sys.stderr)
    ours = servers.pop("aqueduct objective")
    http["aqueduct objective"] = sweep_http(ours, RATES, args.seconds)
    overload = round(1.5 * at_objective(http["aqueduct objective"]))
    extra = [overload] if overload and not point_at(http["aqueduct objective"], overload) else []
    if extra:
        http["aqueduct objective"] += sweep_http(ours, extra, args.seconds)
    for name, server in servers.items():
        print(f"{name} ...", file=sys.stderr)
        http[name] = sweep_http(server, RATES + extra, args.seconds)

    python: dict[str, list[dict[str, Any]]] = {}
    if not args.skip_python_api:
        runs = [
            ("aqueduct objective", sys.executable, "objective"),
            ("aqueduct fixed 5 ms", sys.executable, "fixed"),
        ]
        if args.upstream_python:
            runs.append(("upstream 1.15", args.upstream_python, "fixed"))
        for name, python_exe, mode in runs:
            print(f"python api: {name} ...", file=sys.stderr)
            python[name] = sweep_python(python_exe, mode, RATES + extra, args.seconds)

    out = Report("slo", "make bench-slo")
    out.data = {
        "limit": LIMIT,
        "objective_s": OBJECTIVE_S,
        "rates": RATES,
        "overload": overload,
        "http": http,
        "python_api": python,
    }
    out.section("http", table("HTTP, open loop (openloop), model emulator, objective 50 ms", http))
    out.section("http_targets", targets(http, overload))
    if python:
        title = "Python API, open loop (a new asyncio task per request)"
        out.section("python_api", table(title, python))
        out.section("python_api_targets", targets(python, overload))
    out.write(report)
    plot(http, "HTTP", report / "slo.png")
    if python:
        plot(python, "Python API", report / "slo-python-api.png")


if __name__ == "__main__":
    main()
