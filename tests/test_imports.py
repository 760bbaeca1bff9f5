"""The package's import graph has no cycles, at module level or between its subpackages. Every import counts,
including those inside functions (a lazy import still couples the two modules); imports under
`if TYPE_CHECKING:` do not (they never run). And no test file imports from another test file: what several share
lives in tests/conftest.py (fixtures), tests/helpers.py and the other modules of tests/ not named test_*."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "trainer" / "medo1"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.Module, package: str) -> list[str]:
    """Every dotted name imported anywhere in the module, skipping `if TYPE_CHECKING:` blocks."""
    names: list[str] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names += [f"{base}.{alias.name}" for alias in node.names]
        pending.extend(ast.iter_child_nodes(node))
    return names


def import_graph() -> dict[str, set[str]]:
    """medo1 module -> the medo1 modules it imports (`from medo1.x import y` names module medo1.x.y if there is
    one, else medo1.x)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = {known(imported) for imported in _imported_names(ast.parse(path.read_text()), package)}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def subpackage(module: str) -> str:
    """medo1.launch.kubernetes -> medo1.launch; top-level modules stand for themselves."""
    return ".".join(module.split(".")[:2])


def test_the_cycle_finder_finds_a_cycle_and_a_clean_graph_has_none():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_the_import_graph_reads_lazy_imports_and_skips_type_checking_ones(tmp_path):
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medo1.a import A\n"
        "def f():\n    from medo1.b import B\nfrom . import c\n"
    )
    assert sorted(_imported_names(tree, "medo1.pkg")) == ["medo1.b.B", "medo1.pkg.c", "typing.TYPE_CHECKING"]
    graph = import_graph()
    assert "medo1.chart" in graph["medo1.launch.rendering"]  # sanity: the walk sees real edges


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


def test_no_subpackage_imports_itself_back():
    packages: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        packages.setdefault(subpackage(module), set()).update(
            subpackage(t) for t in targets if subpackage(t) != subpackage(module)
        )
    assert cycles(packages) == []


def test_the_readme_layout_is_the_tree():
    """README's module list is what `python -m tests.readme_layout` generates from the tree and its docstrings."""
    from tests.readme_layout import README, layout_block, readme_block

    assert readme_block(README.read_text(encoding="utf-8")) == layout_block(), (
        "README.md's layout is stale: run `python -m tests.readme_layout`"
    )


def imports_of_test_files(tree: ast.Module) -> list[str]:
    """The imports in a test module (inside functions too) that reach a test module, each as `line N: <the import>`.
    A relative import is read from tests/."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(["tests"] * bool(node.level) + [node.module] * bool(node.module))
            modules = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        if any(m.startswith(("tests.test_", "test_")) for m in modules):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_test_file_imports_another_test_file():
    """Shared fixtures go to tests/conftest.py and shared helpers to tests/helpers.py (or a module of their own such as
    tests/kube_standin.py), never imported from the test file that happens to define them."""
    sample = (
        "from tests.conftest import REPO\nfrom tests import helpers\ndef f():\n    from tests.test_rl import as_cli\n"
    )
    assert imports_of_test_files(ast.parse(sample)) == ["line 4: from tests.test_rl import as_cli"]
    others = "from . import test_rl\nimport tests.test_rl\nfrom .test_rl import x\nfrom tests import test_rl\nfrom . import helpers"
    assert len(imports_of_test_files(ast.parse(others))) == 4

    crossing = [
        f"tests/{path.name} {found}"
        for path in sorted((REPO / "tests").glob("test_*.py"))
        for found in imports_of_test_files(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert crossing == [], (
        "test files importing from other test files (move what they share to tests/helpers.py):\n" + "\n".join(crossing)
    )
