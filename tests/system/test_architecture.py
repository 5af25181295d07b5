"""The import structure docs/architecture.md draws: the library imports nothing outside
itself (serve/, tune/, jobs/ are entrypoints above it), its packages sit in layers and
import only downwards, there is no import cycle (lazy imports inside functions included,
benchmarks too), an import inside a function says why it is deferred, and nothing edits
sys.path or PYTHONPATH to find library code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = ROOT / "emogen"

# Each library unit (a top-level module or a package of emogen) and its layer, bottom up.
# A unit imports only units of lower layers; units of one layer do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("emogen", "errors", "logs", "options", "runtime"),
    ("storage",),
    ("config",),
    ("models",),
    ("presets", "audio"),
    ("checkpoint", "data", "evaluation"),
    ("tracking",),
    ("inference",),
    ("training",),
    ("experiment", "serving"),
    ("cli",),
)
LAYER_OF = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
DEFERRED = "# deferred:"  # the comment an import inside a function carries: why it is not at the top


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_nodes(path: Path) -> list[ast.Import | ast.ImportFrom]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _imports(path: Path, module: str | None = None) -> set[str]:
    """Every module this file imports, at the top or inside a function, absolute names."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _import_nodes(path):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        else:
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def _unit(module: str) -> str:
    """emogen.data.features -> data; emogen.config -> config; emogen -> emogen."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _graph(files: dict[str, Path]) -> dict[str, set[str]]:
    return {name: {m for m in _imports(path, name) if m in files and m != name} for name, path in files.items()}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _graph({_module_name(p): p for p in LIBRARY.rglob("*.py")})


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Depth-first search for a back edge; returns the whole cycle."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_library_imports_no_entrypoint():
    for path in LIBRARY.rglob("*.py"):
        outside = {m for m in _imports(path) if m.split(".")[0] in ("serve", "tune", "jobs", "benchmarks", "tests")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_the_library_does_not_edit_sys_path():
    for path in LIBRARY.rglob("*.py"):
        text = path.read_text()
        for needle in ("sys.path.insert", "sys.path.append", 'environ["PYTHONPATH"]', "register_pickle_by_value"):
            assert needle not in text, f"{path.relative_to(ROOT)} uses {needle}"


def test_the_tests_do_not_edit_sys_path():
    """Shared helpers live in tests/support.py and are imported as tests.support."""
    for path in (ROOT / "tests").rglob("*.py"):
        text = path.read_text()
        for needle in ("sys.path.insert(", "sys.path.append("):
            assert needle not in text or path.name == Path(__file__).name, f"{path.relative_to(ROOT)} uses {needle}"


def test_every_unit_has_a_layer(graph):
    units = {_unit(name) for name in graph}
    assert units == set(LAYER_OF), f"units without a layer: {sorted(units - set(LAYER_OF))}, layers without a unit: {sorted(set(LAYER_OF) - units)}"


def test_imports_point_down_the_layers(graph):
    upward = sorted(
        f"{name} ({_unit(name)}, layer {LAYER_OF[_unit(name)]}) imports {target} ({_unit(target)}, layer {LAYER_OF[_unit(target)]})"
        for name, targets in graph.items() for target in targets
        if _unit(target) != _unit(name) and LAYER_OF[_unit(target)] >= LAYER_OF[_unit(name)]
    )
    assert not upward, "imports that do not point down a layer:\n" + "\n".join(upward)


def test_training_never_imports_serving(graph):
    assert not [(n, t) for n, ts in graph.items() for t in ts if _unit(n) == "training" and _unit(t) == "serving"]


def test_no_import_cycle(graph):
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_among_the_benchmarks():
    """Benchmarks run as scripts (`python benchmarks/x.py`), so they import each other by file name."""
    here = ROOT / "benchmarks"
    files = {p.stem: p for p in here.glob("*.py")}
    cycle = _find_cycle({name: {m.split(".")[0] for m in _imports(p, name)} & set(files) - {name} for name, p in files.items()})
    assert cycle is None, "import cycle in benchmarks/: " + " -> ".join(cycle)


def test_imports_inside_functions_say_why_they_are_deferred():
    """An import belongs at the top of its module, where it shows the dependency graph; one
    inside a function (an optional or heavy dependency, or one a worker must not load)
    carries `# deferred: <why>` on its line or on the comment line above its group."""
    unexplained = []
    for path in sorted(LIBRARY.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in _import_nodes(path):
            if node.col_offset == 0:
                continue
            row = node.lineno - 1
            while row >= 0 and DEFERRED not in lines[row]:
                above = lines[row].strip()
                if row != node.lineno - 1 and not above.startswith(("import ", "from ", "#", ")")) and not above.endswith(","):
                    break
                row -= 1
            if row < 0 or DEFERRED not in lines[row]:
                unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not unexplained, f"{len(unexplained)} imports inside functions without `{DEFERRED} why`:\n" + "\n".join(unexplained)


def test_imports_are_read_inside_functions_and_relative(tmp_path):
    """Lazy imports count (a cycle made of them is still a cycle), relative ones resolve."""
    (tmp_path / "a.py").write_text("def f():\n    from emogen.b import g\n\nfrom .models import ser\n")
    found = _imports(tmp_path / "a.py", module="emogen.a")
    assert {"emogen.b", "emogen.models", "emogen.models.ser"} <= found


def test_a_cycle_and_an_upward_import_are_found():
    """The checks above can fail: a two-module cycle is named, an upward edge is seen."""
    assert _find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    assert LAYER_OF[_unit("emogen.serving.app")] > LAYER_OF[_unit("emogen.training.driver")]
