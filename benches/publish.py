"""`make bench-publish`: copy the benchmarks' reports (``bench-report/*.json``)
into ``docs/reports/`` and their plots into ``docs/images/``, and rewrite the
README's headline figures from them. The documentation renders the reports
itself (``docs/_ext/bench_tables.py``); ``tests/test_bench_reports.py`` checks that the
README's headline is the one these reports give.

A report that is not in ``bench-report/`` keeps its published copy: run one
benchmark and publish its figures alone.
"""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches" / "slo"))

from points import at_objective, point_at  # noqa: E402

DOCS = ROOT / "docs"
REPORTS = ("bench", "ray", "http", "big_answer", "protocols", "slo")
PLOTS = ("latency_vs_callers", "throughput_vs_batch_size", "slo", "slo-python-api")
START = ".. headline: made by benches/publish.py from docs/reports/ (make bench-publish)"
END = ".. end of headline"
TIMES, DASH = "\u00d7", "\u2013"


def load(name: str, folder: Path = DOCS / "reports") -> dict[str, Any]:
    return dict(json.loads((folder / f"{name}.json").read_text()))


def _span(values: list[float]) -> str:
    low, high = min(values), max(values)
    if round(low) == round(high):
        return f"{low:.0f}{TIMES}"
    return f"{low:.0f}{DASH}{high:.0f}{TIMES}"


def headline(folder: Path = DOCS / "reports") -> list[str]:
    """The README's headline bullets, from the published reports."""
    bench = load("bench", folder)["data"]
    ours, theirs = bench["aqueduct"], bench["upstream"]

    def web(workload: str) -> str:
        rate = ours[workload]["tasks_per_s"]
        base = theirs.get(workload, {}).get("tasks_per_s")
        return f"{rate:,.0f} tasks/s" + (f" ({rate / base:.1f}{TIMES} upstream)" if base else "")

    slo = load("slo", folder)["data"]

    def held(section: str, name: str) -> str:
        """A framework's rate at the objective, and what it does at 1.5x."""
        points = slo[section][name]
        over = point_at(points, slo["overload"])
        assert over, f"{name}: no point at {slo['overload']}/s"
        refused = over["reject_p99_ms"]
        return (
            f"up to {at_objective(points):,.0f} requests/s and at {slo['overload']:,} still"
            f" {over['goodput']:,.0f} a second in time"
            + (f", refusing the rest in {refused:.1f} ms p99" if refused is not None else "")
        )

    peers = ", ".join(
        f"{name} {at_objective(points):,.0f}"
        for name, points in slo["http"].items()
        if not name.startswith("aqueduct")
    )
    http = load("http", folder)["data"]["noop"]
    front = [http["aqueduct http"][c]["rps"] / http["mosec"][c]["rps"] for c in ("32", "256")]
    oip = load("protocols", folder)["data"]["oip"]["noop"]
    triton = [
        oip["aqueduct oip"][c]["rps"] / oip["pytriton oip"][c]["rps"] for c in oip["pytriton oip"]
    ]
    bullets = [
        "**Web-shaped load** (a new asyncio task per call, classes in ``__main__``, against"
        f" upstream 1.15 in the same run, ``make bench``): one step {web('web_1step')},"
        f" three steps {web('web_3step')}, batches of 32 {web('web_batch32')}.",
        "**Under a latency objective, open loop** (``make bench-slo``: a model of 2 ms + 0.2 ms"
        f" per item, batches of at most 32, limit {slo['limit']:,.0f} requests/s; Poisson"
        f" arrivals; {slo['objective_s'] * 1e3:.0f} ms): 99 % answered in time by aqueduct's"
        f" HTTP front {held('http', 'aqueduct objective')} (the peers' rates: {peers});"
        " through the Python API"
        f" {held('python_api', 'aqueduct objective')}.",
        f"**HTTP** (``make bench-http``, wrk): the no-op route {_span(front)} mosec's"
        f" requests/s at 32 and 256 connections; the Open Inference Protocol {_span(triton)}"
        " Triton's (through PyTriton) on small requests.",
    ]
    return [
        line
        for bullet in bullets
        for line in textwrap.wrap(bullet, 78, initial_indent="- ", subsequent_indent="  ")
    ]


def rewrite_readme(readme: Path, lines: list[str]) -> None:
    """Put ``lines`` between the README's headline markers, a blank line
    either side."""
    text = readme.read_text().splitlines()
    start, end = text.index(START), text.index(END)
    readme.write_text("\n".join([*text[: start + 1], "", *lines, "", *text[end:]]) + "\n")


def readme_headline(readme: Path) -> list[str]:
    """The headline bullets as the README has them."""
    text = readme.read_text().splitlines()
    return text[text.index(START) + 2 : text.index(END) - 1]


def main() -> None:
    source = ROOT / "bench-report"
    copied = []
    for name in REPORTS:
        if (source / f"{name}.json").exists():
            shutil.copy(source / f"{name}.json", DOCS / "reports" / f"{name}.json")
            copied.append(name)
    for name in PLOTS:
        if (source / f"{name}.png").exists():
            shutil.copy(source / f"{name}.png", DOCS / "images" / f"{name}.png")
            copied.append(f"{name}.png")
    rewrite_readme(ROOT / "README.rst", headline())
    print(f"published: {', '.join(copied) or 'nothing new'}; README headline rewritten")


if __name__ == "__main__":
    main()
