"""Every code block of README.rst and docs/ runs, or says why it does not.

A block is one of:

* a ``python`` block with no marker: run as a script (``__main__``, in a
  fresh interpreter; top-level ``await`` allowed) that must exit 0;
* ``.. serves: METHOD PATH BODY`` before it: a script that serves HTTP on
  port 8000 (moved to a free port here) — it must answer that request with a
  200, then stop cleanly on SIGTERM;
* ``.. tested: NAME`` before it: run by the test ``NAME`` of this file (the
  upstream README's examples, checked for more than their exit code);
* ``.. fragment: REASON`` before it: not run, for the reason given; its
  ``from aqueduct... import`` lines must still name what exists.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.rst", *sorted((ROOT / "docs").rglob("*.rst"))]
PAGES = [p for p in PAGES if not {"_build", "api"} & set(p.relative_to(ROOT).parts)]
RUNNER = Path(__file__).resolve().parent / "run_block.py"
MARKER = re.compile(r"^\.\. (fragment|serves|tested): *(.*)$")


@dataclass
class Block:
    page: Path
    line: int
    language: str
    source: str
    marker: str | None
    argument: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The ``.. code-block::`` directives of ``page``, dedented, with the
    marker comment before each (if any)."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    for i, line in enumerate(lines):
        if not line.startswith(".. code-block::"):
            continue
        language = line.split("::", 1)[1].strip()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and (not lines[j].strip() or lines[j][0] in " \t"):
            body.append(lines[j])
            j += 1
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        match = MARKER.match(lines[k]) if k >= 0 else None
        source = textwrap.dedent("\n".join(body).expandtabs(4)).strip() + "\n"
        marker, argument = (match.group(1), match.group(2).strip()) if match else (None, "")
        found.append(Block(page, i + 1, language, source, marker, argument))
    return found


BLOCKS = [b for page in PAGES for b in blocks_of(page)]


def by_marker(marker: str | None, python: bool = True) -> list[Block]:
    return [b for b in BLOCKS if b.marker == marker and (b.language == "python") == python]


def ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


def test_the_pages_have_their_blocks():
    assert len(BLOCKS) >= 20  # the finder still finds them (29 when this was written)
    assert by_marker(None) and by_marker("serves") and by_marker("tested")


@pytest.mark.parametrize("block", BLOCKS, ids=ids(BLOCKS))
def test_every_block_is_run_or_says_why_not(block: Block):
    if block.marker == "fragment":
        assert len(block.argument) >= 8, f"{block.where}: a fragment gives its reason"
    elif block.marker == "tested":
        assert callable(globals().get(block.argument)), f"{block.where}: no test {block.argument}"
    else:
        assert block.language == "python", f"{block.where}: only Python runs; mark it a fragment"


FRAGMENT_IMPORTS = [b for b in BLOCKS if b.marker == "fragment" and "from aqueduct" in b.source]


@pytest.mark.parametrize("block", FRAGMENT_IMPORTS, ids=ids(FRAGMENT_IMPORTS))
def test_a_fragments_aqueduct_imports_exist(block: Block):
    for module, names in re.findall(
        r"^\s*from (aqueduct[\w.]*) import ([\w, ]+)$", block.source, re.M
    ):
        imported = importlib.import_module(module)
        for name in (n.strip() for n in names.split(",")):
            assert hasattr(imported, name), f"{block.where}: {module} has no {name}"


def run_script(
    source: str, tmp_path: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "block.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(RUNNER), str(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
    )


def skip_for_missing(stderr: str) -> None:
    missing = re.search(r"ModuleNotFoundError: No module named '([\w.]+)'", stderr)
    if missing and not missing.group(1).startswith("aqueduct"):
        pytest.skip(f"needs {missing.group(1)}")


@pytest.mark.parametrize("block", by_marker(None), ids=ids(by_marker(None)))
def test_a_block_runs(block: Block, tmp_path: Path):
    done = run_script(block.source, tmp_path)
    skip_for_missing(done.stderr)
    assert done.returncode == 0, f"{block.where} exited {done.returncode}:\n{done.stderr[-3000:]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("block", by_marker("serves"), ids=ids(by_marker("serves")))
def test_a_serving_block_serves_and_stops(block: Block, tmp_path: Path):
    method, path, body = block.argument.split(" ", 2)
    port = free_port()
    assert "port=8000" in block.source, f"{block.where}: serves on port 8000"
    script = tmp_path / "block.py"
    script.write_text(block.source.replace("port=8000", f"port={port}"))
    proc = subprocess.Popen(
        [sys.executable, str(RUNNER), str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        answer = None
        while answer is None:
            assert proc.poll() is None, f"{block.where} exited:\n{proc.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, f"{block.where}: no answer on {path} in 60 s"
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}", data=body.encode(), method=method
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = (response.status, response.read())
            except OSError:
                time.sleep(0.2)
        assert answer[0] == 200, answer
        json.loads(answer[1])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.communicate()[1][-3000:]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def run_block(source: str, module_name: str, namespace: dict | None = None) -> tuple[dict, object]:
    """Executes a block in this process as a module (by default one that
    workers cannot import by name: its classes travel by value); returns its
    namespace and, for top-level ``await``, the coroutine to await."""
    if namespace is None:
        namespace = {"__name__": module_name}
    code = compile(source, f"docs:{module_name}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)  # a coroutine when the block awaits
    return namespace, result


def block_tested_by(test: str) -> str:
    matches = [b for b in by_marker("tested") if b.argument == test]
    assert len(matches) == 1, f"expected one block tested by {test}"
    return matches[0].source


async def test_getting_started_aiohttp_service(aiohttp_client):
    namespace, _ = run_block(
        block_tested_by("test_getting_started_aiohttp_service"), "readme_getting_started"
    )
    app = namespace["prepare_app"]()
    flow = app["flow"]
    try:
        client = await aiohttp_client(app)
        response = await asyncio.wait_for(client.post("/sum", data=b"1000"), 20)
        assert response.status == 200
        assert await response.json() == {"result": sum(i * i for i in range(1000))}
        many = await asyncio.wait_for(
            asyncio.gather(*(client.post("/sum", data=str(n).encode()) for n in range(50))), 20
        )
        assert [(await r.json())["result"] for r in many] == [
            sum(i * i for i in range(n)) for n in range(50)
        ]
    finally:
        await asyncio.wait_for(flow.stop(), 20)


async def test_batching_example_meets_its_own_timing_assertions():
    """The example is a script's ``__main__`` (its classes reach the workers
    by value once, then travel by name): it runs as one here. It asserts
    wall-clock bounds with 20 ms of slack; on a shared 2-core machine a
    neighbour (a Ray cluster shutting down, say) can eat that, so a missed
    bound is retried twice. A batching bug misses it every time."""
    pytest.importorskip("numpy")
    misses = []
    script = types.ModuleType("__main__")
    real_main = sys.modules["__main__"]
    sys.modules["__main__"] = script
    try:
        for _ in range(3):
            script.__dict__.clear()
            script.__dict__["__name__"] = "__main__"
            _, coroutine = run_block(
                block_tested_by("test_batching_example_meets_its_own_timing_assertions"),
                "__main__",
                script.__dict__,
            )
            assert asyncio.iscoroutine(coroutine)
            try:
                await asyncio.wait_for(coroutine, 60)
                return
            except TimeoutError as exc:
                misses.append(exc)
                await asyncio.wait_for(script.__dict__["flow_with_batch_handler"].stop(), 20)
    finally:
        sys.modules["__main__"] = real_main
    pytest.fail(f"the batching guide's example missed its time bound 3 times: {misses!r}")


def test_sentry_example_runs():
    pytest.importorskip("raven")
    namespace, result = run_block(block_tested_by("test_sentry_example_runs"), "readme_sentry")
    assert result is None
    assert namespace["log"] is sys.modules["aqueduct.logger"].log
