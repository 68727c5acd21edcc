"""The benchmark figures of the docs come from the benchmarks' reports:
a report written by ``benches/report.py`` renders in a page (its text, and
single figures in prose), a section or figure it does not have fails the
build instead of printing nothing, and the README's headline is the one
``benches/publish.py`` makes from the published reports."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ROOT / "benches"


def bench_module(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(tmp_path: Path, page: str) -> subprocess.CompletedProcess[str]:
    """A one-page Sphinx site with the docs' benchmark extension, built with
    warnings as errors, as ``make docs`` builds."""
    (tmp_path / "conf.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(ROOT / "docs" / "_ext")!r})
            extensions = ["bench_tables"]
            exclude_patterns = ["_build", "reports"]
            """
        )
    )
    (tmp_path / "index.rst").write_text(page)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-q",
            "-E",
            "-W",
            "-b",
            "html",
            str(tmp_path),
            str(tmp_path / "_build"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    report = bench_module("report").Report("demo", "make demo")
    report.data = {"web": {"rate": 12345.6, "base": 1000.0}}
    report.section("table", ["mode      tokens/s", "static       3,032"])
    report.write(tmp_path / "reports")
    return tmp_path


def test_a_report_renders_its_section_and_figures(site: Path):
    page = (
        "Demo\n====\n\n.. bench-output:: demo table\n\n"
        "It did :report:`demo|web/rate` a second, :report-ratio:`demo|web/rate|web/base`"
        " the base.\n"
    )
    done = build(site, page)
    assert done.returncode == 0, done.stderr
    html = (site / "_build" / "index.html").read_text()
    assert "static       3,032" in html
    assert "make demo" in html and "docs/reports/demo.json" in html
    assert "It did 12,346 a second, 12.3\u00d7 the base." in html


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (".. bench-output:: demo nosuch", "bench-output demo nosuch: KeyError('nosuch')"),
        (".. bench-output:: missing table", "bench-output missing table: FileNotFoundError"),
        ("A figure: :report:`demo|web/nosuch`.", "report: demo|web/nosuch: KeyError"),
        (
            "A ratio: :report-ratio:`demo|web/rate|web/zero`.",
            "report-ratio: demo|web/rate|web/zero",
        ),
    ],
)
def test_what_a_report_lacks_fails_the_build(site: Path, line: str, error: str):
    done = build(site, f"Demo\n====\n\n{line}\n")
    assert done.returncode != 0
    assert error in done.stderr, done.stderr


def test_the_readme_headline_is_made_from_the_published_reports():
    publish = bench_module("publish")
    readme = ROOT / "README.rst"
    assert publish.readme_headline(readme) == publish.headline(), (
        "README.rst's headline figures differ from docs/reports/: run make bench-publish"
    )
