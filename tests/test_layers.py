"""The house rule "imports point downward only" as a test: every module of lmkit imports modules of its own
layer or a lower one, never a higher one, and no modules import each other in a cycle (ARCHITECTURE.md, "Layers").

The walk reads the source with `ast`, so every `import` and `from ... import` counts, those inside functions
too (a lazy import is still a dependency); imports under `if TYPE_CHECKING:` do not run and do not count.
An import is an edge to the module it names (`from a import b`: to a.b when that is a module), not to the
packages above it that Python also runs, or every package's __init__ would form a cycle with its modules.
Modules named only in strings (`importlib.import_module(name)`, the CLI's "module:function" strings) are not
seen."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

# The layers of /work/shared/ARCHITECTURE.md ("Layers: imports point downward only"), lowest first. A key is
# a top-level module or package of lmkit and stands for everything inside it; "lmkit" is the root __init__
# alone. A module whose top level is not here fails the test: a new package is placed here deliberately.
LAYERS = {
    # 0 foundations
    "lmkit": 0,
    "lmkit.errors": 0,
    "lmkit.units": 0,
    "lmkit.vocab": 0,
    "lmkit.config": 0,
    "lmkit.progress": 0,
    "lmkit.artifacts": 0,
    "lmkit.devices": 0,
    "lmkit.parallel": 0,
    "lmkit.plotting": 0,
    # 1-8 domain packages
    "lmkit.tokenizer": 1,
    "lmkit.data": 2,
    "lmkit.models": 3,
    "lmkit.checkpoint": 4,  # reading a checkpoint: below training, which saves and resumes
    "lmkit.evaluation": 4,
    "lmkit.generation": 5,
    "lmkit.interpret": 5,
    "lmkit.training": 6,
    "lmkit.interop": 7,
    "lmkit.serving": 7,  # the HTTP server: errors, limits, streaming, the engine; no model logic of its own
    "lmkit.tasks": 8,  # each kind of model: its evaluations, its answers, its routes on the server
    # 9 stages, 10 the command line
    "lmkit.stages": 9,
    "lmkit.cli": 10,
    "lmkit.__main__": 10,
}

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "lmkit"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module
    where: str  # file:line of the statement


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package (an __init__ is its package)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _import_nodes(nodes):
    """Every Import/ImportFrom in or below nodes, except under `if TYPE_CHECKING:` (its else counts)."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _import_nodes(node.orelse)
        else:
            yield from _import_nodes(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that name is or lies inside (`lmkit.models.GPT` -> `lmkit.models`)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path], package_dir: Path) -> list[Import]:
    """The imports of one module that land inside the package, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = package_dir.name
    is_package = path.name == "__init__.py"
    found = []
    for node in _import_nodes([tree]):
        where = f"{path.relative_to(package_dir.parent)}:{node.lineno}"
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from a import b` imports the module a.b when there is one, else a name from a
            names = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                     for alias in node.names]
        for name in names:
            if name == package or name.startswith(package + "."):
                target = _resolve(name, modules)
                if target is not None:
                    found.append(Import(module, target, where))
    return found


def layer_of(module: str, layers: dict[str, int]) -> int | None:
    """The layer of a module: that of its top-level module or package (the root __init__ has its own)."""
    return layers.get(".".join(module.split(".")[:2]))


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; each component sorted, the components in no particular order."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = lowlink[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = lowlink[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    lowlink[node] = min(lowlink[node], index[successor])
            else:
                work.pop()
                if work:
                    lowlink[work[-1][0]] = min(lowlink[work[-1][0]], lowlink[node])
                if lowlink[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def layer_violations(package_dir: Path, layers: dict[str, int]) -> list[str]:
    """One line per broken rule: a module in no layer, an upward import, an import cycle."""
    modules = module_files(package_dir)
    problems = []
    for module, path in modules.items():
        if layer_of(module, layers) is None:
            problems.append(f"unplaced module: {module} ({path.relative_to(package_dir.parent)}) is in no layer; "
                            f"place its top level {'.'.join(module.split('.')[:2])} in LAYERS")
    edges = [edge for module, path in modules.items() for edge in imports_of(module, path, modules, package_dir)]
    for edge in edges:
        source, target = layer_of(edge.source, layers), layer_of(edge.target, layers)
        if source is not None and target is not None and target > source:
            problems.append(f"upward import: {edge.source} (layer {source}) imports {edge.target} (layer {target}) "
                            f"at {edge.where}")
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for edge in edges:
        graph[edge.source].add(edge.target)
    for component in strongly_connected_components(graph):
        if len(component) > 1 or component[0] in graph[component[0]]:
            members = set(component)
            inside = sorted({f"{e.source} -> {e.target} ({e.where})" for e in edges
                             if e.source in members and e.target in members})
            problems.append(f"import cycle: {', '.join(component)}: " + "; ".join(inside))
    return problems


def test_lmkit_imports_point_downward_and_form_no_cycle():
    problems = layer_violations(PACKAGE_ROOT, LAYERS)
    assert not problems, ("lmkit breaks its layering (ARCHITECTURE.md, 'Layers'; the table is LAYERS in "
                          "tests/test_layers.py):\n" + "\n".join(problems))


# -- controls: the checker passes a clean package and reports each kind of problem -------------------------
SYNTHETIC_LAYERS = {"pkg": 0, "pkg.low": 0, "pkg.mid": 1, "pkg.high": 2}


def write_package(root: Path, files: dict[str, str]) -> Path:
    """pkg/ under root with the given files (relative path -> source); every folder gets an __init__.py."""
    package = root / "pkg"
    for name, source in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == package.parent:
                break
            (folder / "__init__.py").touch()
        path.write_text(source)
    return package


def test_checker_passes_downward_imports_and_ignores_type_checking(tmp_path):
    package = write_package(tmp_path, {
        "low.py": "import os\n",
        "mid/__init__.py": "from pkg.mid.core import thing\n",
        "mid/core.py": "from ..low import os\nfrom . import helpers\nthing = 1\n",
        "mid/helpers.py": "import pkg.low\n",
        "high.py": ("from typing import TYPE_CHECKING\nimport pkg.mid\nif TYPE_CHECKING:\n    import pkg.high\n"
                    "def lazy():\n    from pkg import low\n"),
    })
    assert layer_violations(package, SYNTHETIC_LAYERS) == []


def test_checker_reports_an_upward_import_even_a_lazy_one(tmp_path):
    package = write_package(tmp_path, {
        "low.py": "def lazy():\n    from .mid import core\n",
        "mid/core.py": "",
        "high.py": "import pkg.mid\n",
    })
    assert layer_violations(package, SYNTHETIC_LAYERS) == [
        "upward import: pkg.low (layer 0) imports pkg.mid.core (layer 1) at pkg/low.py:2"]


def test_checker_reports_a_cycle_with_its_modules(tmp_path):
    package = write_package(tmp_path, {
        "mid/a.py": "from pkg.mid import b\n",
        "mid/b.py": "from . import c\n",
        "mid/c.py": "def lazy():\n    import pkg.mid.a\n",
    })
    problems = layer_violations(package, SYNTHETIC_LAYERS)
    assert len(problems) == 1 and problems[0].startswith("import cycle: pkg.mid.a, pkg.mid.b, pkg.mid.c: ")
    assert "pkg.mid.c -> pkg.mid.a (pkg/mid/c.py:2)" in problems[0]


def test_checker_reports_a_module_in_no_layer(tmp_path):
    package = write_package(tmp_path, {"stray/__init__.py": "", "stray/thing.py": ""})
    assert [line.split(" (")[0] for line in layer_violations(package, SYNTHETIC_LAYERS)] == [
        "unplaced module: pkg.stray", "unplaced module: pkg.stray.thing"]
