"""Located recipe errors: pydantic errors as one line each, placed by the YAML node tree.

Every problem with a recipe reads ``<file>:<line>: <field.path>: expected <what>, found <value>``.
The line comes from the composed YAML node tree (:mod:`locopack.recipe.yaml_limits` reads it),
matched to the ``loc`` of a pydantic error by a :class:`Locator`, which indexes each mapping once
so that placing any number of errors stays linear.  Unknown keys get a "did you mean" from the field
names of the mapping they sit in.  Values are shown by :func:`show`, which writes at most a
bounded prefix of a value and never the whole of it (a value may be huge or deeply shared).

This module knows the recipe's *shape* only through what its callers pass in (a function that
lists the field names at a ``loc``, and the edit kinds), so it does not import the schema in
:mod:`locopack.recipe.schema`, which imports it.
"""

from __future__ import annotations

import datetime
import difflib
import re
from collections.abc import Callable, Iterator

import yaml
from pydantic import ValidationError

FieldNames = Callable[[tuple], list[str]]
"""Field names (YAML keys, aliases preferred) of the mapping at a ``loc``; [] if unknown."""

_MAX_PROBLEMS = 5
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
    locator = Locator(root)
    problems = [_problem(e, locator, source, field_names, edit_kinds) for e in errors]
    return join_problems(source, problems)


def _problem(
    err: dict, locator: Locator, source: str, field_names: FieldNames, edit_kinds: tuple[str, ...]
) -> str:
    """One line for one pydantic error: file, line, field path, what was expected and found."""
    raw, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx", {})
    loc = tuple(p for i, p in enumerate(raw) if not (i == 2 and raw[0] == "edits"))
    if kind == "extra_forbidden":
        close, names = _suggest(raw, field_names), ", ".join(field_names(raw[:-1]))
        hint = f"did you mean {close!r}?" if close else f"known fields: {names}"
        where = locator.line(loc, key=True)
        return f"{source}:{where}: {field_path(loc)}: unknown field; {hint}"
    if kind == "invalid_key":
        found = f"expected field names (strings) as keys, found {show(raw[-1])}"
        return f"{source}:{locator.line(loc[:-1])}: {field_path(loc[:-1])}: {found}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc, kind = (*loc, "kind"), "missing" if kind == "union_tag_not_found" else kind
    line = locator.line(loc)
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


class Locator:
    """Finds the YAML node at a pydantic ``loc`` under ``root``.

    Each mapping's keys are indexed on first use, so a lookup costs its depth, and placing the
    errors of a mapping with many keys is linear rather than quadratic.
    """

    def __init__(self, root: yaml.Node | None):
        self.root = root
        self._keys: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] = {}

    def _pairs(self, node: yaml.MappingNode) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if id(node) not in self._keys:  # the last of equal keys wins, as in the data
            pairs = ((getattr(k, "value", None), (k, v)) for k, v in node.value)
            self._keys[id(node)] = {name: pair for name, pair in pairs if isinstance(name, str)}
        return self._keys[id(node)]

    def node(self, loc: tuple, key: bool = False) -> yaml.Node | None:
        """The deepest node along ``loc`` (the key node of the last part if ``key``)."""
        node = self.root
        for i, part in enumerate(loc):
            if isinstance(node, yaml.MappingNode):
                pair = self._pairs(node).get(str(part))
                if pair is None:
                    break
                node = pair[0] if key and i == len(loc) - 1 else pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
                if not 0 <= part < len(node.value):
                    break
                node = node.value[part]
            else:
                break
        return node

    def line(self, loc: tuple, key: bool = False) -> int:
        """The 1-based line of :meth:`node` (1 without a document)."""
        return line_of(self.node(loc, key))


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


def show(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters; only about ``limit`` characters of it are
    ever produced, however large or shared ``value`` is."""
    text = ""
    for piece in _repr_pieces(value, limit):
        text += piece
        if len(text) > limit:
            return text[: limit - 3] + "..."
    return text


def _repr_pieces(value: object, limit: int) -> Iterator[str]:
    """The text of ``repr(value)`` in pieces, lazily (each container item on demand)."""
    if isinstance(value, dict):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            if i:
                yield ", "
            yield from _repr_pieces(key, limit)
            yield ": "
            yield from _repr_pieces(item, limit)
        yield "}"
    elif isinstance(value, list | tuple) and value:
        yield "[" if isinstance(value, list) else "("
        for i, item in enumerate(value):
            if i:
                yield ", "
            yield from _repr_pieces(item, limit)
        yield "]" if isinstance(value, list) else ",)" if len(value) == 1 else ")"
    elif isinstance(value, str | bytes) and len(value) > limit:
        yield repr(value[: limit + 1])[:-1]  # without its closing quote: it is cut anyway
    else:
        yield repr(value)


def join_problems(source: str, problems: list[str]) -> str:
    """One problem as is; several under a count header, the first few of them, deduplicated."""
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        return problems[0]
    more = len(problems) - _MAX_PROBLEMS
    lines = [f"{source}: {len(problems)} problems:", *problems[:_MAX_PROBLEMS]]
    return "\n  ".join(lines + ([f"... and {more} more"] if more > 0 else []))
