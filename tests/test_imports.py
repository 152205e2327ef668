"""The project's modules import each other in one direction: no cycles, and the store never
imports torch. Read statically with ``ast``, function-level imports included (a cycle hidden
inside a function is still a cycle); imports under ``if TYPE_CHECKING:`` are left out.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Where each importable package lives in the source tree (pyproject.toml's package-dir).
PACKAGE_DIRS = {
    "attnres_probe": REPO / "attnres_probe",
    "attnres_probe.hooks": REPO / "hooks",
    "attnres_probe.cli": REPO / "cli",
    "attnres_probe.app": REPO / "app",
}


@functools.cache
def project_modules() -> dict[str, Path]:
    """Every module of the project by its dotted name (a package by its ``__init__``)."""
    found = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if any(p.startswith(".") or p == "__pycache__" for p in parts):
                continue
            found[".".join((package, *parts))] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """What ``module`` imports anywhere in it: ``import X`` gives ``X``; ``from X import a``
    gives ``X.a`` when that is a module of the project, else ``X``."""
    modules = project_modules()
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports. The parent packages an import runs
    implicitly are not edges (a package's ``__init__`` importing its own modules is how
    packages work); a name taken from a package's ``__init__`` is."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        names = imported(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {t for t in names if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def test_no_two_project_modules_import_each_other_even_inside_a_function():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    hidden = ast.parse("def f():\n    from attnres_probe.store import reader, open_run\n")
    assert imported(hidden, "x", False) == {"attnres_probe.store.reader", "attnres_probe.store"}
    skipped = ast.parse("if TYPE_CHECKING:\n    import torch\n")
    assert imported(skipped, "x", False) == set()


def test_the_store_never_imports_torch_statically():
    graph, modules = import_graph(), project_modules()
    store = {m for m in modules if (m + ".").startswith("attnres_probe.store.")}
    reached, todo = set(store), list(store)
    while todo:
        for target in graph[todo.pop()]:
            if target not in reached:
                reached.add(target)
                todo.append(target)
    offenders = {
        m
        for m in reached
        for name in imported(ast.parse(modules[m].read_text()), m, False)
        if name == "torch" or name.startswith("torch.")
    }
    assert offenders == set(), f"the store reaches torch through {sorted(offenders)}"


@pytest.mark.skipif(not (REPO / "sample_runs").is_dir(), reason="needs the bundled sample runs")
def test_reading_and_listing_runs_loads_no_torch():
    code = (
        "import sys\n"
        "from attnres_probe.store import list_runs, open_run\n"
        f"infos = list_runs({str(REPO / 'sample_runs')!r})\n"
        "assert infos, 'no sample runs listed'\n"
        "open_run(infos[0].path)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
