"""No import cycles in torchclr: neither between its modules nor between its subpackages and top-level modules.

The graph is read from the source (ast), so an import inside a function counts as much as one at the top (it
still ties the two modules together); only imports under `if TYPE_CHECKING:` are left out.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import torchclr

ROOT = Path(torchclr.__file__).parent


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module of the package (a package is named by its __init__.py)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module `name` imports anywhere in its body (`from a import b` counts as a.b
    when that is a module, else as a)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit_node(other)
            else:
                visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                else node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.update([target] if target in modules else [base] if base in modules else [])
        visit(node)

    visit(ast.parse(path.read_text(), str(path)))
    found.discard(name)
    return found


def unit_of(module: str) -> str:
    """torchclr.data.cache -> torchclr.data; torchclr.train -> torchclr.train: the subpackage or top-level module."""
    return ".".join(module.split(".")[:2])


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = module_names(root)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as err:
        return list(err.args[1])
    return None


def test_the_graph_sees_imports_in_functions_and_relative_ones_but_not_type_checking_ones(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .inner import thing\n")
    (package / "sub" / "inner.py").write_text("thing = 1\n")
    (package / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n"
                                  "def f():\n    from pkg.sub import inner\n")
    (package / "b.py").write_text("import pkg.a\n")
    graph = import_graph(package)
    assert graph == {"pkg": set(), "pkg.sub": {"pkg.sub.inner"}, "pkg.sub.inner": set(), "pkg.a": {"pkg.sub.inner"},
                     "pkg.b": {"pkg.a"}}
    (package / "sub" / "inner.py").write_text("def g():\n    import pkg.b\n")
    assert cycle(import_graph(package)) is not None


def test_no_module_imports_itself_through_others() -> None:
    assert cycle(import_graph()) is None, f"import cycle between modules: {' -> '.join(cycle(import_graph()) or [])}"


def test_no_cycle_between_subpackages_and_top_level_modules() -> None:
    units: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        units.setdefault(unit_of(module), set()).update(unit_of(m) for m in imported if unit_of(m) != unit_of(module))
    found = cycle(units)
    assert found is None, f"import cycle between subpackages: {' -> '.join(found or [])}"
