"""Reading a recipe file and its YAML within hard limits, before any Python value is built.

A recipe is a small text file, but YAML lets a few hundred bytes expand without bound: aliases
that repeat aliases (an "alias bomb"), merge keys that merge merges, an anchor used inside its
own value (a cycle).  So the text is first *composed* into a node tree under limits checked as
each node opens, then the tree is measured *as validation will walk it*, every alias expanded,
and only a tree within the limits is *constructed* into Python values:

- at most :data:`MAX_BYTES` bytes of file (:func:`read_text`), :data:`MAX_CHARS` characters of
  text, and :data:`MAX_SCALAR` in one value;
- at most :data:`MAX_DEPTH` levels of nesting (checked before descending, so deep input ends
  in a located error and never in a ``RecursionError``), and :data:`MAX_KEYS` keys in one
  mapping (checked as each key opens, so a flood of keys is refused after the first few);
- at most :data:`MAX_NODES` nodes and :data:`MAX_DEPTH` levels with every alias expanded.  The
  expansion is counted once per node (aliases share their node), so measuring is linear in the
  text even when the expansion is exponential.

Each refusal, like each YAML syntax error and each duplicate key, is one
:class:`~locopack.errors.RecipeError` line ``<file>:<line>: <field.path>: <problem>``.
"""

from __future__ import annotations

import hashlib
import os

import yaml

from locopack.errors import RecipeError
from locopack.recipe.errors import field_path, line_of

MAX_CHARS = 1_000_000
MAX_SCALAR = 65_536
MAX_DEPTH = 32
MAX_KEYS = 1_000
MAX_NODES = 50_000
MAX_BYTES = 4 * MAX_CHARS  # UTF-8 takes at most 4 bytes a character

_DUP = "; a key may appear once per mapping (YAML would silently keep the last)"
_MERGE = "tag:yaml.org,2002:merge"


class _Located(Exception):
    """A constructor failure, carrying the node it failed on."""

    def __init__(self, node: yaml.Node, error: Exception):
        super().__init__(str(error))
        self.node = node


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that refuses, while composing, what a recipe can never need."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source, self.path = source, []

    def refuse(self, mark: yaml.Mark, problem: str) -> RecipeError:
        parts = [p for p in self.path if p is not None]
        return RecipeError(f"{self.source}:{mark.line + 1}: {field_path(tuple(parts))}: {problem}")

    def compose_node(self, parent: yaml.Node | None, index: yaml.Node | int | None) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        event = self.peek_event()
        if isinstance(parent, yaml.MappingNode) and index is None and len(parent.value) >= MAX_KEYS:
            raise self.refuse(parent.start_mark, f"more than {MAX_KEYS:,} keys in one mapping")
        part = index.value if isinstance(index, yaml.ScalarNode) else index
        self.path.append(part if isinstance(part, str | int) else None)
        try:
            if len(self.path) > MAX_DEPTH:
                raise self.refuse(event.start_mark, f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR:
                problem = f"a value of {len(event.value):,} characters; at most {MAX_SCALAR:,}"
                raise self.refuse(event.start_mark, problem)
            return super().compose_node(parent, index)
        finally:
            self.path.pop()

    def construct_object(self, node: yaml.Node, deep: bool = False) -> object:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecipeError, _Located):
            raise
        except Exception as exc:  # noqa: BLE001 - constructors raise assorted types on odd tags
            raise _Located(node, exc) from None


def read_text(source: str) -> tuple[str, str]:
    """The text of the recipe file ``source`` (at most :data:`MAX_BYTES` are read) and the
    SHA-256 of its bytes.

    Raises:
        RecipeError: the file is missing, unreadable, a directory, too large or not UTF-8.
    """
    if os.path.isdir(source):
        raise RecipeError(f"{source}: is a directory; expected a recipe file (YAML)")
    try:
        with open(source, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(f"{source}: no such file") from None
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{source}: cannot read the recipe: {exc}") from None
    if len(data) > MAX_BYTES:
        raise RecipeError(f"{source}:1: larger than {MAX_BYTES:,} bytes; a recipe is a short file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"{source}:{line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset "
            f"{exc.start}); save the recipe as UTF-8"
        ) from None
    return text, hashlib.sha256(data).hexdigest()


def load_yaml(text: str, source: str) -> tuple[yaml.Node | None, object]:
    """Compose, measure and construct one YAML document within the limits above.

    Returns:
        The root node (None for an empty document; it gives line numbers) and the data.

    Raises:
        RecipeError: for invalid YAML, a duplicate key, or a limit exceeded, naming the line.
    """
    if len(text) > MAX_CHARS:
        line = text[:MAX_CHARS].count("\n") + 1
        raise RecipeError(f"{source}:{line}: more than {MAX_CHARS:,} characters; too long")
    loader = None
    try:
        loader = _BoundedLoader(text, source)
        root = loader.get_single_node()
        if root is None:
            return None, None
        _measure(root, source, {}, set())
        _no_duplicates(root, source, (), set())
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else f"{source}:1"
        what = "; ".join(str(x) for x in (exc.context, exc.problem) if x)
        column = f" (column {mark.column + 1})" if mark else ""
        raise RecipeError(f"{where}: invalid YAML{column}: {what}") from None
    except _Located as exc:
        first = (str(exc).splitlines() or ["cannot read this value"])[0][:200]
        raise RecipeError(f"{source}:{line_of(exc.node)}: invalid YAML: {first}") from None
    except yaml.YAMLError as exc:  # reader errors (e.g. a control character) carry a position
        line = text[: getattr(exc, "position", None) or 0].count("\n") + 1
        first = (str(exc).splitlines() or ["unreadable"])[0][:200]
        raise RecipeError(f"{source}:{line}: invalid YAML: {first}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _measure(node: yaml.Node, source: str, done: dict[int, tuple[int, int]], open_: set[int]):
    """``(nodes, levels)`` of ``node`` with aliases expanded, each node measured once.

    The traversal follows document order, so an alias meets its anchor's node either measured
    (shared) or still open (a cycle); its recursion is as deep as the text's nesting.
    """
    if id(node) in done:
        return done[id(node)]
    if id(node) in open_:
        raise RecipeError(
            f"{source}:{line_of(node)}: an alias is used inside the value it names (a cycle); "
            "a recipe cannot refer to itself"
        )
    open_.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    nodes, levels = 1, 1
    for child in children:
        size, height = _measure(child, source, done, open_)
        nodes, levels = nodes + size, max(levels, height + 1)
        if nodes > MAX_NODES:
            raise RecipeError(
                f"{source}:{line_of(node)}: this value expands to more than {MAX_NODES:,} "
                "values through its aliases; write the recipe out without repeated aliases"
            )
    if levels > MAX_DEPTH:
        raise RecipeError(
            f"{source}:{line_of(node)}: nested deeper than {MAX_DEPTH} levels once its aliases "
            "are expanded"
        )
    open_.discard(id(node))
    done[id(node)] = nodes, levels
    return nodes, levels


def _no_duplicates(node: yaml.Node, source: str, loc: tuple, seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    children = enumerate(node.value) if isinstance(node, yaml.SequenceNode) else []
    if isinstance(node, yaml.MappingNode):
        keys: set[tuple[str, str]] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE:
                if (key.tag, key.value) in keys:
                    path = field_path((*loc, key.value))
                    raise RecipeError(f"{source}:{line_of(key)}: {path}: duplicate key{_DUP}")
                keys.add((key.tag, key.value))
        children = [(getattr(k, "value", "?"), v) for k, v in node.value]
    for part, child in children:
        _no_duplicates(child, source, (*loc, part), seen)
