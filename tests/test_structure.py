"""The package's layers, read from its source with ``ast``: imports go only
downward (every import counts, ``TYPE_CHECKING`` ones and those inside
functions too), nothing imports in a circle, and no module reaches into
another's private names or attributes."""

from __future__ import annotations

import ast
import re
from fnmatch import fnmatch
from pathlib import Path

import aqueduct
import pytest

PACKAGE = Path(aqueduct.__file__).parent

#: Top first: a module may import from its own layer or any below it.
LAYERS = [
    # the command line, over the public API
    ["aqueduct._cli", "aqueduct.__main__"],
    # the public API users import, and the integrations over it
    [
        "aqueduct",
        "aqueduct.flow",
        "aqueduct.http",
        "aqueduct.openapi",
        "aqueduct.openai",
        "aqueduct.kserve",
        "aqueduct.testing",
        "aqueduct.integrations*",
        "aqueduct.metrics.prometheus",
    ],
    ["aqueduct._runtime*"],  # the parent's runtime
    ["aqueduct._worker*"],  # the worker's runtime
    [
        "aqueduct.step",
        "aqueduct.handler",
        "aqueduct.task",
        "aqueduct.elastic",
        "aqueduct.tracing",
    ],  # what users build with
    ["aqueduct._ipc*"],  # what the processes of a flow share
    ["aqueduct.exceptions", "aqueduct.logger", "aqueduct.metrics*", "aqueduct._core"],
]

#: Private names a module may use on objects not its own: the standard
#: library's, and the one accessor of ``Flow``'s machinery, in its module.
ALLOWED_PRIVATE = {
    ("aqueduct._worker.loop", "os._exit"),
    ("aqueduct._runtime.launch", "subprocess._args_from_interpreter_flags"),
    ("aqueduct.flow", "flow._runtime"),
}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    out["aqueduct._core"] = ast.Module(body=[], type_ignores=[])  # the native module
    return out


MODULES = _modules()


def _package_of(name: str) -> str:
    is_package = (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()
    return name if is_package else name.rpartition(".")[0]


def _imports(name: str, tree: ast.Module) -> set[str]:
    """Every aqueduct module ``name`` imports."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "aqueduct"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name).split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != "aqueduct":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    found.discard(name)
    return found


GRAPH = {name: _imports(name, tree) for name, tree in MODULES.items()}


def _layer(name: str) -> int:
    for index, patterns in enumerate(LAYERS):
        if any(fnmatch(name, pattern) for pattern in patterns):
            return index
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS")


def test_every_module_has_a_layer_and_imports_only_downward():
    upward = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if _layer(target) < _layer(name)
    ]
    assert not upward, upward


def circles_of(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph`` (module -> the modules it imports):
    Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            component.append(node)
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_no_import_circle():
    assert not circles_of({name: set(targets) for name, targets in GRAPH.items()})


CRATES = Path(__file__).resolve().parent.parent / "crates"


def rust_modules(crate: Path) -> dict[str, set[str]]:
    """A crate's top-level modules -> the modules of the crate each names
    (``crate::x`` outside comments)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((crate / "src").rglob("*.rs")):
        module = path.relative_to(crate / "src").parts[0].removesuffix(".rs")
        if module == "lib":
            continue
        code = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("//")
        )
        named = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", code)) - {module}
        graph.setdefault(module, set()).update(named)
    return graph


@pytest.mark.parametrize("crate", sorted(p.name for p in CRATES.iterdir()))
def test_each_crates_modules_import_one_way(crate):
    graph = rust_modules(CRATES / crate)
    assert len(graph) > 3, "found the crate's modules"
    assert not circles_of(graph)


def test_no_module_reaches_into_another_ones_private_names():
    reached = []
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                private = [
                    a.name
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__") and a.name != "_core"
                ]
                reached += [f"{name}: from {node.module} import {p}" for p in private]
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") and node.attr.endswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            if (name, ast.unparse(node)) not in ALLOWED_PRIVATE:
                reached.append(f"{name}: {ast.unparse(node)}")
    assert not reached, reached


def test_the_flow_facade_stays_small():
    flow = next(
        node
        for node in MODULES["aqueduct.flow"].body
        if isinstance(node, ast.ClassDef) and node.name == "Flow"
    )
    assert flow.end_lineno is not None
    assert flow.end_lineno - flow.lineno < 300
