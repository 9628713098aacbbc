"""Located recipe errors: YAML nodes with line numbers, and pydantic errors as one line each.

Every problem with a recipe reads ``<file>:<line>: <field.path>: expected <what>, found <value>``.
The line comes from the composed YAML node tree (:func:`load_yaml` keeps it), matched to the
``loc`` of a pydantic error by :func:`node_at`.  Unknown keys get a "did you mean" from the
field names of the mapping they sit in, and duplicate keys in one mapping are errors (YAML would
silently keep the last one).

This module knows the recipe's *shape* only through what its callers pass in (a function that
lists the field names at a ``loc``, and the edit kinds), so it does not import the schema in
:mod:`locopack.recipe`, which imports it.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import ValidationError

from locopack.errors import RecipeError

FieldNames = Callable[[tuple], list[str]]
"""Field names (YAML keys, aliases preferred) of the mapping at a ``loc``; [] if unknown."""

_MAX_PROBLEMS = 5
_DUP = "; a key may appear once per mapping (YAML would silently keep the last)"
_WHAT = dict(
    int_type="an integer",
    float_type="a number",
    finite_number="a finite number",
    bool_type="a boolean (true or false)",
    string_type="a string",
    list_type="a list",
    model_type="a mapping",
    model_attributes_type="a mapping",
    dict_type="a mapping",
    recursion_loop="data without cycles",
    too_short="at least 1 item",
)
_BOUNDS = dict(
    gt="a value > ",
    ge="a value >= ",
    lt="a value < ",
    le="a value <= ",
    multiple_of="a multiple of ",
)


def load_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """Compose and construct one YAML document; the node tree gives line numbers.

    Returns:
        The root node (None for an empty document) and the constructed data.

    Raises:
        RecipeError: for invalid YAML, a duplicate key, or nesting too deep, naming the line.
    """
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is not None:
            _no_duplicates(root, source, (), set())
        return root, (loader.construct_document(root) if root is not None else None)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        what = "; ".join(str(x) for x in (exc.context, exc.problem) if x)
        column = f" (column {mark.column + 1})" if mark else ""
        raise RecipeError(f"{where}: invalid YAML{column}: {what}") from None
    except RecipeError:
        raise
    except RecursionError:
        raise RecipeError(f"{source}: the recipe is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - constructors raise assorted types on odd tags
        position = getattr(exc, "position", None)
        where = f"{source}:{text[:position].count(chr(10)) + 1}" if position is not None else source
        raise RecipeError(f"{where}: invalid YAML: {str(exc).splitlines()[0]}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _no_duplicates(node: yaml.Node, source: str, loc: tuple, seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    children = enumerate(node.value) if isinstance(node, yaml.SequenceNode) else []
    if isinstance(node, yaml.MappingNode):
        keys: set[tuple[str, Any]] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in keys:
                    path = field_path((*loc, key.value))
                    raise RecipeError(f"{source}:{line_of(key)}: {path}: duplicate key{_DUP}")
                keys.add((key.tag, key.value))
        children = [(getattr(k, "value", "?"), v) for k, v in node.value]
    for part, child in children:
        _no_duplicates(child, source, (*loc, part), seen)


def validation_message(
    exc: ValidationError,
    root: yaml.Node | None,
    source: str,
    field_names: FieldNames,
    edit_kinds: tuple[str, ...],
) -> str:
    """The text of the :class:`RecipeError` for a pydantic ``exc``: one located line per problem.

    A "missing" error for the field that an unknown key most likely misspells is dropped, since
    the unknown-field line already names it.
    """
    errors = exc.errors(include_url=False)
    typos = {
        (*e["loc"][:-1], _suggest(e["loc"], field_names))
        for e in errors
        if e["type"] == "extra_forbidden"
    }
    errors = [e for e in errors if e["type"] != "missing" or tuple(e["loc"]) not in typos]
    problems = [_problem(e, root, source, field_names, edit_kinds) for e in errors]
    return join_problems(source, problems)


def _problem(
    err: dict, root: yaml.Node, source: str, field_names: FieldNames, edit_kinds: tuple[str, ...]
) -> str:
    """One line for one pydantic error: file, line, field path, what was expected and found."""
    raw, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx", {})
    loc = tuple(p for i, p in enumerate(raw) if not (i == 2 and raw[0] == "edits"))
    if kind == "extra_forbidden":
        close, names = _suggest(raw, field_names), ", ".join(field_names(raw[:-1]))
        hint = f"did you mean {close!r}?" if close else f"known fields: {names}"
        where = line_of(node_at(root, loc, key=True))
        return f"{source}:{where}: {field_path(loc)}: unknown field; {hint}"
    if kind == "invalid_key":
        found = f"expected field names (strings) as keys, found {show(raw[-1])}"
        return f"{source}:{line_of(node_at(root, loc[:-1]))}: {field_path(loc[:-1])}: {found}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc, kind = (*loc, "kind"), "missing" if kind == "union_tag_not_found" else kind
    line = line_of(node_at(root, loc))
    if kind == "missing":
        tags = ", ".join(repr(k) for k in edit_kinds)
        extra = f"; expected one of {tags}" if loc[-1] == "kind" and loc[0] == "edits" else ""
        return f"{source}:{line}: {field_path(loc)}: required field is missing{extra}"
    found = repr(ctx["tag"]) if "tag" in ctx else show(err.get("input"))
    if kind == "recipe" or kind not in _WHAT and not ctx:
        what = err["msg"].removeprefix("expected ") if kind == "recipe" else err["msg"].lower()
    elif kind in _WHAT:
        what = _WHAT[kind]
    elif "expected" in ctx or "expected_tags" in ctx:
        what = f"one of {ctx.get('expected') or ctx.get('expected_tags')}"
    else:
        key = next((k for k in _BOUNDS if k in ctx), None)
        bound = ctx.get(key)
        bound = f"{bound:g}" if isinstance(bound, float) else bound  # 0.0 -> 0
        what = f"{_BOUNDS[key]}{bound}" if key else err["msg"].lower()
    return f"{source}:{line}: {field_path(loc)}: expected {what}, found {found}{_hint(kind, err)}"


def _hint(kind: str, err: dict) -> str:
    value = err.get("input")
    if kind == "bool_type" and isinstance(value, str):
        return " (a string; write true or false without quotes)"
    if kind in ("int_type", "float_type") and isinstance(value, str):
        return " (a string; write the number without quotes)"
    if kind == "string_type" and isinstance(value, int | float | datetime.date):
        return " (put it in quotes)"
    return ""


def _suggest(loc: tuple, field_names: FieldNames) -> str | None:
    close = difflib.get_close_matches(str(loc[-1]), field_names(loc[:-1]), n=1)
    return close[0] if close else None


def node_at(root: yaml.Node, loc: tuple, key: bool = False) -> yaml.Node:
    """The deepest YAML node along ``loc`` (the key node of the last part if ``key``)."""
    node = root
    for i, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            pairs = [(k, v) for k, v in node.value if getattr(k, "value", None) == str(part)]
            if not pairs:
                break
            node = pairs[-1][0] if key and i == len(loc) - 1 else pairs[-1][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
        else:
            break
    return node


def line_of(node: yaml.Node | None) -> int:
    """The 1-based line where ``node`` starts (1 without a node)."""
    return node.start_mark.line + 1 if node is not None else 1


def field_path(loc: tuple) -> str:
    """``loc`` as a dotted field path, e.g. ``edits[0].prompts[2]``."""
    out = ""
    for part in loc:
        if isinstance(part, str) and re.fullmatch(r"[\w-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"  # list indices, and keys that need quoting
    return out or "(top level)"


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def join_problems(source: str, problems: list[str]) -> str:
    """One problem as is; several under a count header, the first few of them, deduplicated."""
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        return problems[0]
    more = len(problems) - _MAX_PROBLEMS
    lines = [f"{source}: {len(problems)} problems:", *problems[:_MAX_PROBLEMS]]
    return "\n  ".join(lines + ([f"... and {more} more"] if more > 0 else []))
