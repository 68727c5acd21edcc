"""``.. slo-table:: reports/slo.json``: the table of ``make bench-slo``'s
report (every framework's rate at the objective, latency at two loads,
goodput and refusals at 1.5x aqueduct's rate at the objective), made from
the report itself so the figures are never retyped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList

LOADS = (952, 2857)
NONE = "\u2013"  # an en dash: nothing to show


def _at_objective(points: list[dict[str, Any]]) -> float:
    return max((p["rate"] for p in points if p["within_share"] >= 0.99), default=0.0)


def _point(points: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    return next((p for p in points if abs(p["rate"] - rate) < 0.5), None)


def _ms(value: float | None) -> str:
    return NONE if value is None else f"{value:,.1f}"


def rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per framework and interface."""
    overload = report["overload"]
    out = []
    for section, label in (("http", "HTTP"), ("python_api", "Python API")):
        for name, points in report.get(section, {}).items():
            low, mid = (_point(points, rate) for rate in LOADS)
            over = _point(points, overload)
            out.append(
                [
                    f"{label}: {name}",
                    f"{_at_objective(points):,.0f}",
                    _ms(low and low["p99_ms"]),
                    _ms(mid and mid["p99_ms"]),
                    f"{over['goodput']:,.0f}" if over else NONE,
                    _ms(over and over["reject_p99_ms"]),
                ]
            )
    return out


class SloTable(Directive):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        path = Path(env.srcdir) / self.arguments[0]
        env.note_dependency(str(path))
        report = json.loads(path.read_text())
        head = [
            "framework",
            "rate at 50 ms (req/s)",
            *(f"p99 at {rate:,}/s (ms)" for rate in LOADS),
            f"goodput at {report['overload']:,}/s",
            "refusals p99 (ms)",
        ]
        lines = [".. list-table::", "   :header-rows: 1", ""]
        for row in [head, *rows(report)]:
            lines.append(f"   * - {row[0]}")
            lines += [f"     - {cell}" for cell in row[1:]]
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return container.children


def setup(app: Any) -> dict[str, bool]:
    app.add_directive("slo-table", SloTable)
    return {"parallel_read_safe": True}
