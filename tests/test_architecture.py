"""The import structure docs/architecture.md describes: the library imports nothing outside
itself (serve/, tune/, jobs/ are entrypoints above it), its modules import each other in
one direction (no cycle, lazy imports inside functions included), and it never edits
sys.path or PYTHONPATH to find code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "emogen"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Every module this file imports, at the top or inside a function, absolute names."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in LIBRARY.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}


def test_the_library_imports_no_entrypoint():
    for path in LIBRARY.rglob("*.py"):
        outside = {m for m in _imports(path) if m.split(".")[0] in ("serve", "tune", "jobs", "benchmarks", "tests")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_the_library_does_not_edit_sys_path():
    for path in LIBRARY.rglob("*.py"):
        text = path.read_text()
        for needle in ("sys.path.insert", "sys.path.append", 'environ["PYTHONPATH"]', "register_pickle_by_value"):
            assert needle not in text, f"{path.relative_to(ROOT)} uses {needle}"


def test_no_import_cycle(graph):
    """Depth-first search for a back edge; the message names the whole cycle."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_imports_are_read_inside_functions_and_relative(tmp_path):
    """Lazy imports count (a cycle made of them is still a cycle), relative ones resolve."""
    (tmp_path / "a.py").write_text("def f():\n    from emogen.b import g\n\nfrom .models import ser\n")
    found = _imports(tmp_path / "a.py", module="emogen.a")
    assert {"emogen.b", "emogen.models", "emogen.models.ser"} <= found
