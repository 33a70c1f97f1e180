"""No import circles in ``flower_app`` and ``strategies``, and ``strategies`` never imports ``flower_app``.

Every import counts: module-level, function-local and ``if TYPE_CHECKING:`` ones, absolute
and relative; ``from pkg import mod`` is an edge to ``pkg.mod`` when that is a module.
A function-local import still ties two modules together: it only hides the circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flower_app", "strategies")


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under each package (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, is_package: bool, source: str) -> set[str]:
    """Every dotted name ``source`` imports, anywhere in it (``from a import b`` gives ``a`` and ``a.b``)."""
    # A package's relative imports start from the package itself, a module's from its parent.
    here = module.split(".") if is_package else module.split(".")[:-1]
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            origin = ".".join([*base, *([node.module] if node.module else [])])
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``modules`` it imports."""
    graph = {}
    for name, path in modules.items():
        imported = imported_names(name, path.name == "__init__.py", path.read_text())
        graph[name] = {other for other in imported if other in modules and other != name}
    return graph


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def test_circles_finds_a_hand_made_circle_and_nothing_else():
    # Prepare: a -> b -> c -> a is a circle; d hangs off it; e -> f is a chain
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": set()}

    # Execute
    found = circles(graph)

    # Assert
    assert found == [["a", "b", "c"]]


def test_circles_keeps_two_circles_apart():
    # Prepare: two circles joined by a one-way edge are two components
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}}

    # Execute / Assert
    assert circles(graph) == [["a", "b"], ["c", "d"]]


def test_every_kind_of_import_is_an_edge(tmp_path):
    # Prepare: one package whose modules import each other in every way the test must see
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from . import top\n")  # relative, from a package
    (package / "top.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.low import Thing\n"
    )
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "low.py").write_text("def f():\n    from ..sub import other\n")  # function-local, relative
    (package / "sub" / "other.py").write_text("import pkg.top\n")

    # Execute
    graph = import_graph(module_files(tmp_path, ["pkg"]))

    # Assert
    assert graph == {
        "pkg": {"pkg.top"},
        "pkg.top": {"pkg.sub.low"},
        "pkg.sub": set(),
        "pkg.sub.low": {"pkg.sub", "pkg.sub.other"},
        "pkg.sub.other": {"pkg.top"},
    }
    assert circles(graph) == [["pkg.sub.low", "pkg.sub.other", "pkg.top"]]


def test_flower_app_and_strategies_import_no_circle():
    # Execute
    found = circles(import_graph(module_files(ROOT, PACKAGES)))

    # Assert
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(circle) for circle in found)


def test_strategies_never_imports_flower_app():
    # Prepare
    modules = module_files(ROOT, ["strategies"])

    # Execute
    reaching = {
        name: sorted(n for n in imported_names(name, path.name == "__init__.py", path.read_text()) if _in_app(n))
        for name, path in modules.items()
    }

    # Assert
    assert modules, "no strategies modules found"
    assert {name: names for name, names in reaching.items() if names} == {}


def _in_app(name: str) -> bool:
    return name == "flower_app" or name.startswith("flower_app.")
