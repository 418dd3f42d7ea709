"""The package's three layers, read from its imports: lecture -> machinery -> commands, nothing pointing up.

    classifier/config.py, registry.py   the settings every layer reads (layer 0)
    classifier/lecture/                 the lecture's code; imports only the config   (1)
    classifier/machinery/               what the lab adds around the lecture          (2)
    classifier/commands/                one module per task backend                   (3)
    classifier/lab.py                   what the notebooks import, and all they import (4)

Every import in the package is read with `ast` (those inside functions too,
since a lazy import is still an arrow in the drawing). The test fails when an
arrow points up a layer, when a module imports another module's private name,
when modules import each other in a circle, or when a function grows past
MAX_FUNCTION_LINES.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "classifier"
LAYERS = {"lecture": 1, "machinery": 2, "commands": 3}
TOP = {"classifier.lab": 4}
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """0 for the package's base (config, registry), then lecture 1, machinery 2, commands 3, lab 4."""
    if module in TOP:
        return TOP[module]
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def package_sources() -> dict[str, str]:
    return {module_name(path): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def imports(source: str, modules: set[str]) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every classifier import in `source`.

    `from classifier.machinery import runs` imports the module classifier.machinery.runs, not a name.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.startswith("classifier")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("classifier"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                if child in modules:
                    found.append((child, None, node.lineno))
                else:
                    found.append((node.module, alias.name, node.lineno))
    return found


def check(sources: dict[str, str]) -> list[str]:
    """Every broken rule in `sources` ({module name: source}), one line each."""
    modules = set(sources)
    problems = []
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, source in sources.items():
        for target, name, line in imports(source, modules):
            if target not in modules:
                problems.append(f"{module}:{line} imports {target}, which does not exist")
                continue
            if layer(target) > layer(module):
                problems.append(f"{module}:{line} points up: imports {target} (layer {layer(target)} > {layer(module)})")
            if name and name.startswith("_"):
                problems.append(f"{module}:{line} imports the private name {target}.{name}")
            if target != module and not _is_package_of(target, module):
                graph[module].add(target)
    problems += [f"import circle: {' -> '.join(circle)}" for circle in circles(graph)]
    return problems


def _is_package_of(target: str, module: str) -> bool:
    return module.startswith(target + ".")


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules (Tarjan), each closed: [a, b, a]."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            group.append(node)
            if len(group) > 1:
                found.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def long_functions(sources: dict[str, str], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    return [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for module, source in sources.items() for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > limit]


def test_the_package_keeps_its_layers_without_private_names_or_circles():
    assert check(package_sources()) == []


def test_no_function_is_longer_than_the_limit():
    sources = {**package_sources(), "tasks": (ROOT / "tasks.py").read_text()}
    assert long_functions(sources) == []


def test_each_layer_has_its_folder():
    folders = {path.parent.name for path in PACKAGE.rglob("*.py")}
    assert set(LAYERS) <= folders
    for name in LAYERS:
        assert (PACKAGE / name / "__init__.py").is_file()


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda path: path.name)
def test_notebooks_import_only_lab(path):
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
    tree = ast.parse("\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))))
    modules = set(package_sources())
    taken = {target for target, _, _ in imports(ast.unparse(tree), modules)}
    assert taken == {"classifier.lab"}


@pytest.mark.parametrize("script", ["tasks.py", ".devcontainer/init_env.py", *sorted(
    str(path.relative_to(ROOT)) for path in (ROOT / "benchmarks").glob("*.py"))])
def test_scripts_outside_the_package_take_no_private_names(script):
    modules = set(package_sources())
    taken = [f"{target}.{name}" for target, name, _ in imports((ROOT / script).read_text(), modules)
             if name and name.startswith("_")]
    assert taken == []


# The checker itself, on small made-up packages: each rule can fail.
def test_the_checker_finds_an_arrow_up_a_private_name_and_a_circle():
    sources = {
        "classifier.config": "",
        "classifier.lecture.train": "from classifier.machinery.runs import finish_run\n",
        "classifier.machinery.runs": "from classifier.commands.train import _resume\n",
        "classifier.commands.train": "def f():\n    from classifier.machinery import runs\n",
    }
    problems = check(sources)
    assert any("classifier.lecture.train:1 points up: imports classifier.machinery.runs" in line for line in problems)
    assert any("private name classifier.commands.train._resume" in line for line in problems)
    assert "import circle: classifier.commands.train -> classifier.machinery.runs -> classifier.commands.train" \
        in problems
    assert long_functions({"m": "def f():\n" + "    x = 1\n" * 60}) == ["m.f: 61 lines"]
    assert check({"classifier.config": "", "classifier.lecture.train": "from classifier.config import Config\n"}) == []
