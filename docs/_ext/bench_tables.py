"""The benchmark figures of the docs, made from the benchmarks' reports
(``docs/reports/NAME.json``, copied from ``bench-report/`` by ``make
bench-publish``) so that none is retyped:

``.. bench-output:: NAME SECTION``
    what the benchmark printed in that section, as it printed it, and which
    command, day and machine it comes from.
``.. slo-table:: slo``
    ``make bench-slo``'s table: every framework's rate at the objective,
    latency at two loads, goodput and refusals at 1.5x aqueduct's rate at the
    objective.
``:report:`NAME|a/b/c[|FORMAT]```
    one figure of report NAME's data (``FORMAT`` a format spec, default ``,.0f``).
``:report-ratio:`NAME|a/b/c|d/e/f[|FORMAT]```
    one figure over another, as ``1.2`` and a multiplication sign (default format ``.1f``).

A report, section or figure that is not there is an error, so ``make docs``
(warnings as errors) fails rather than print a stale or empty figure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.parsers.rst.states import Inliner
from docutils.statemachine import StringList

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches" / "slo"))

from points import at_objective, point_at

LOADS = (952, 2857)
NONE = "\u2013"  # an en dash: nothing to show


def _ms(value: float | None) -> str:
    return NONE if value is None else f"{value:,.1f}"


def rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per framework and interface."""
    overload = report["overload"]
    out = []
    for section, label in (("http", "HTTP"), ("python_api", "Python API")):
        for name, points in report.get(section, {}).items():
            low, mid = (point_at(points, rate) for rate in LOADS)
            over = point_at(points, overload)
            out.append(
                [
                    f"{label}: {name}",
                    f"{at_objective(points):,.0f}",
                    _ms(low and low["p99_ms"]),
                    _ms(mid and mid["p99_ms"]),
                    f"{over['goodput']:,.0f}" if over else NONE,
                    _ms(over and over["reject_p99_ms"]),
                ]
            )
    return out


def _report(env: Any, name: str) -> dict[str, Any]:
    path = Path(env.srcdir) / "reports" / f"{name}.json"
    env.note_dependency(str(path))
    return dict(json.loads(path.read_text()))


def _origin(report: dict[str, Any], name: str) -> nodes.Node:
    """Which command, day and machine a report's figures come from."""
    machine = report["machine"]
    paragraph = nodes.paragraph()
    paragraph += nodes.emphasis(
        text=f"{report['command']}, {machine['date']}: {machine['cpus']} CPUs, "
        f"Python {machine['python']} (docs/reports/{name}.json)"
    )
    return paragraph


class SloTable(Directive):
    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        try:
            report = _report(self.state.document.settings.env, name)
            data = report["data"]
            body = rows(data)
        except (OSError, KeyError, ValueError) as exc:
            raise self.error(f"slo-table {name}: {exc!r}") from exc
        head = [
            "framework",
            "rate at 50 ms (req/s)",
            *(f"p99 at {rate:,}/s (ms)" for rate in LOADS),
            f"goodput at {data['overload']:,}/s",
            "refusals p99 (ms)",
        ]
        lines = [".. list-table::", "   :header-rows: 1", ""]
        for row in [head, *body]:
            lines.append(f"   * - {row[0]}")
            lines += [f"     - {cell}" for cell in row[1:]]
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return [*container.children, _origin(report, name)]


def _figure(data: dict[str, Any], where: str) -> float:
    value: Any = data
    for key in where.split("/"):
        value = value[key]
    return float(value)


class BenchOutput(Directive):
    required_arguments = 2

    def run(self) -> list[nodes.Node]:
        name, section = self.arguments
        env = self.state.document.settings.env
        try:
            report = _report(env, name)
            lines = report["sections"][section]
        except (OSError, KeyError, ValueError) as exc:
            raise self.error(f"bench-output {name} {section}: {exc!r}") from exc
        text = "\n".join(lines)
        return [nodes.literal_block(text, text, language="text"), _origin(report, name)]


def _figure_role(ratio: bool) -> Any:
    def role(
        name: str,
        rawtext: str,
        text: str,
        lineno: int,
        inliner: Inliner,
        options: Any = None,
        content: Any = None,
    ) -> tuple[list[nodes.Node], list[nodes.Node]]:
        env = inliner.document.settings.env
        parts = text.split("|")
        try:
            data = _report(env, parts[0])["data"]
            if ratio:
                value = _figure(data, parts[1]) / _figure(data, parts[2])
                shown = f"{value:{parts[3] if len(parts) > 3 else '.1f'}}\u00d7"
            else:
                value = _figure(data, parts[1])
                shown = f"{value:{parts[2] if len(parts) > 2 else ',.0f'}}"
        except (OSError, KeyError, IndexError, ValueError, ZeroDivisionError) as exc:
            message = inliner.reporter.error(f"{name}: {text}: {exc!r}", line=lineno)
            return [inliner.problematic(rawtext, rawtext, message)], [message]
        return [nodes.Text(shown)], []

    return role


def setup(app: Any) -> dict[str, bool]:
    app.add_directive("slo-table", SloTable)
    app.add_directive("bench-output", BenchOutput)
    app.add_role("report", _figure_role(ratio=False))
    app.add_role("report-ratio", _figure_role(ratio=True))
    return {"parallel_read_safe": True}
