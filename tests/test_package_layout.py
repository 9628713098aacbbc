"""The package's shape: data flows one way, and a release's contract is written down once.

Read from the source with ``ast`` (every import, including those inside functions, which
still make a dependency), so these checks need no model and run in a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

import locopack
from locopack import filenames

PACKAGE = Path(locopack.__file__).parent
CORE_MAY_NOT_IMPORT = ("locopack.release", "locopack.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports() -> dict[str, set[tuple[str, str]]]:
    """{module: {(imported locopack module, imported name)}} for every module of locopack."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = found.setdefault(module, set())
        typing_only = {
            id(inner)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
            for inner in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: no dependency at run time
                continue
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, node, path.name == "__init__.py")
                for alias in node.names:
                    edges.add((target, alias.name))
            elif isinstance(node, ast.Import):
                edges.update((alias.name, "") for alias in node.names)
    return {
        m: {(t, n) for t, n in e if t == "locopack" or t.startswith("locopack.")}
        for m, e in found.items()
    }


def _graph() -> dict[str, set[str]]:
    modules = set(_imports())
    graph: dict[str, set[str]] = {}
    for module, edges in _imports().items():
        targets = set()
        for target, name in edges:
            sub = f"{target}.{name}"
            targets.add(sub if sub in modules else target)
        graph[module] = {t for t in targets if t != module and t in modules}
    return graph


def _is_ancestor(package: str, module: str) -> bool:
    return module.startswith(package + ".")


def test_no_import_cycles():
    graph = _graph()
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not _is_ancestor(t, module)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_core_never_imports_the_release_side_or_the_cli():
    for module, targets in _graph().items():
        if module.startswith(CORE_MAY_NOT_IMPORT) or module in ("locopack", "locopack.__main__"):
            continue
        upward = sorted(t for t in targets if t.startswith(CORE_MAY_NOT_IMPORT))
        assert not upward, f"{module} imports {upward}"
    # the release side never reaches into the CLI either
    for module, targets in _graph().items():
        if module.startswith("locopack.release"):
            assert not [t for t in targets if t.startswith("locopack.cli")], module


def test_no_private_name_is_imported_from_another_module():
    for module, edges in _imports().items():
        private = sorted(
            f"{t}.{n}"
            for t, n in edges
            if n.startswith("_") and not n.endswith("__") and t != module
        )
        assert not private, f"{module} imports private names {private}"


def test_release_file_names_are_written_once():
    names = {
        value for key, value in vars(filenames).items() if key.isupper() and isinstance(value, str)
    }
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "filenames.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names or node.value in _ALSO_WORDS, (
                    f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r} is a release "
                    "file name: import it from locopack.filenames"
                )


#: names that are also ordinary words in messages and check names
_ALSO_WORDS = {"merged", "onnx", "evidence", "cache"}
