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
#: the core (models, hooks, localize, edit, export) works on tensors and modules; it never reaches
#: up into the packages that run a build, measure it, release it or move it to the Hub
CORE = (
    "locopack.models",
    "locopack.hooks",
    "locopack.localize",
    "locopack.edit",
    "locopack.export",
)
CORE_MAY_NOT_IMPORT = (
    "locopack.pipeline",
    "locopack.evidence",
    "locopack.release",
    "locopack.hub.",
    "locopack.cli",
)
MAX_SHARE = 0.20
MAX_ANY = 40


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
    """{module: {(imported locopack module, imported name)}} for every module of locopack.

    Every import counts: at the top, inside functions (a module's ``__getattr__`` included) and
    under ``TYPE_CHECKING`` (an annotation is a dependency of the reader too)."""
    found: dict[str, set[tuple[str, str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = found.setdefault(module, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _resolve(module, node, path.name == "__init__.py")
                for alias in node.names:
                    edges.add((target, alias.name))
            elif isinstance(node, ast.Import):
                edges.update((alias.name, "") for alias in node.names)
            elif _is_import_module_call(node):
                edges.add((node.args[0].value, ""))
    return {
        m: {(t, n) for t, n in e if t == "locopack" or t.startswith("locopack.")}
        for m, e in found.items()
    }


def _is_import_module_call(node: ast.AST) -> bool:
    """``importlib.import_module("locopack....")`` with a literal name (a lazy re-export)."""
    return (
        isinstance(node, ast.Call)
        and ast.unparse(node.func).endswith("import_module")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


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


def test_no_import_cycles():
    graph = _graph()  # every edge, a package's __init__ importing its own submodules included
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
        if not module.startswith(CORE):
            continue
        upward = sorted(t for t in targets if t.startswith(CORE_MAY_NOT_IMPORT))
        assert not upward, f"{module} imports {upward}"
    # only the CLI (and ``python -m locopack``) imports the CLI
    for module, targets in _graph().items():
        if not module.startswith(("locopack.cli", "locopack.__main__")):
            assert not [t for t in targets if t.startswith("locopack.cli")], module


def _group(path: Path) -> str:
    """A subpackage, or a top-level module group named by its first word (``hub_ref`` -> hub)."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py").strip("_").split("_")[0]


def test_no_package_holds_more_than_a_fifth_of_the_lines():
    lines: dict[str, int] = {}
    for path in PACKAGE.rglob("*.py"):
        group = _group(path)
        lines[group] = lines.get(group, 0) + len(path.read_text(encoding="utf-8").splitlines())
    total = sum(lines.values())
    for group, count in sorted(lines.items(), key=lambda item: -item[1]):
        print(f"{group:12s} {count:6d} lines  {count / total:6.1%}")
    too_big = {g: f"{n / total:.1%}" for g, n in lines.items() if n > MAX_SHARE * total}
    assert not too_big, f"more than {MAX_SHARE:.0%} of the package's lines: {too_big}"


def _any_annotations(tree: ast.AST) -> int:
    """How many times ``Any`` is named in the annotations of a module."""
    annotations: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args
            every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            every += [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
            annotations += [a.annotation for a in every if a.annotation is not None]
            annotations += [node.returns] if node.returns is not None else []
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
    count = 0
    for annotation in annotations:
        for sub in ast.walk(annotation):
            if isinstance(sub, ast.Name | ast.Attribute):
                count += (sub.id if isinstance(sub, ast.Name) else sub.attr) == "Any"
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                count += sub.value.replace("[", " ").replace("]", " ").split().count("Any")
    return count


def test_few_annotations_say_any():
    counts = {
        str(path.relative_to(PACKAGE)): _any_annotations(ast.parse(path.read_text("utf-8")))
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    total = sum(counts.values())
    print(f"{total} annotations name Any; most in:")
    for name, count in sorted(counts.items(), key=lambda item: -item[1])[:10]:
        print(f"  {count:3d} {name}")
    assert total <= MAX_ANY, f"{total} annotations name Any (at most {MAX_ANY})"


#: where the kind of a family's text sites may be told apart; everyone else asks the object the
#: family hands out (``family.text_sites``) or calls what is registered for its kind
KIND_SWITCH_ALLOWED = ("models", "hooks")
#: the attributes that told the kinds apart before ``text_sites``
KIND_FLAGS = {"joint_attention", "refines_text"}


def _kind_flag_reads(source: str, name: str) -> list[str]:
    """Where ``source`` reads one of :data:`KIND_FLAGS` (as an attribute or by getattr)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in KIND_FLAGS:
            found.append(f"{name}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in {"getattr", "hasattr"}:
            flags = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
            found += [f"{name}:{node.lineno}: {f!r}" for f in flags if f in KIND_FLAGS]
    return found


def test_no_module_outside_models_and_hooks_tells_the_kinds_of_text_site_apart_by_flag():
    found = [
        read
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] not in KIND_SWITCH_ALLOWED
        for read in _kind_flag_reads(path.read_text("utf-8"), str(path.relative_to(PACKAGE)))
    ]
    assert not found, "ask family.text_sites instead: " + "; ".join(found)


def test_the_kind_flag_scan_finds_each_way_of_reading_a_flag():
    source = "if family.joint_attention:\n    x = getattr(f, 'refines_text', False)\n"
    expected = ["m.py:1: .joint_attention", "m.py:2: 'refines_text'"]
    assert sorted(_kind_flag_reads(source, "m.py")) == expected
    assert _kind_flag_reads("family.text_sites.swaps_pooled\n", "m.py") == []


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
