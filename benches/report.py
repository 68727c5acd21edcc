"""A benchmark's report: what it printed, section by section, and the figures
it printed them from, written to ``bench-report/NAME.json`` (and the text to
``NAME.txt``). ``benches/publish.py`` copies the reports into
``docs/reports/``, where the documentation renders them
(``docs/_ext/bench_tables.py``): no figure in the docs is typed by hand."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

#: Where the benchmarks write their reports, relative to the project root.
FOLDER = Path(__file__).resolve().parents[1] / "bench-report"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "date": datetime.date.today().isoformat(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.machine()}",
    }


class Report:
    """Sections of printed lines and the data behind them, for one command."""

    def __init__(self, name: str, command: str) -> None:
        self.name = name
        self.command = command
        self.sections: dict[str, list[str]] = {}
        self.data: dict[str, Any] = {}

    def section(self, key: str, lines: list[str]) -> None:
        """Print ``lines`` and keep them as section ``key``."""
        if self.sections:
            print()
        print("\n".join(lines), flush=True)
        self.sections.setdefault(key, []).extend(lines)

    def write(self, folder: Path = FOLDER) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        body = {
            "command": self.command,
            "machine": machine(),
            "sections": self.sections,
            "data": self.data,
        }
        path.write_text(json.dumps(body, indent=1) + "\n")
        text = [line for lines in self.sections.values() for line in [*lines, ""]]
        (folder / f"{self.name}.txt").write_text("\n".join(text))
        print(f"report: {path}", file=sys.stderr)
        return path
