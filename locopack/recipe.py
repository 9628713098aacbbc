"""The edit recipe: a strict pydantic schema for the YAML file, and loading with located errors.

A recipe is read once and validated strictly: ints are ints, booleans are YAML booleans, unknown
keys are errors.  The loaded :class:`Recipe` keeps its original text and SHA-256 so that every
output can carry them.  Every problem becomes one :class:`~locopack.errors.RecipeError` whose
lines read ``<file>:<line>: <field.path>: expected <what>, found <value>``; line numbers come
from the composed YAML node tree, matched to the ``loc`` of pydantic's errors.

Design notes: the Python field for ``edit.lambda`` is ``lam`` with the alias only, so the YAML
key must be ``lambda`` (``lam`` is an unknown field; from Python use
``EditSettings.model_validate({"lambda": 0.2})``).  An edit's ``prompts`` and ``held_out`` are
templates where ``{concept}`` stands for the edit's label; targets and preserve prompts are
literal.  Duplicate keys in one mapping are errors (YAML would silently keep the last one).
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import os
import re
import string
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from locopack.errors import RecipeError

SUPPORTED_VERSIONS = (1,)
EDIT_KINDS = ("erase", "update")
_MAX_PROBLEMS = 5
_DUP = "; a key may appear once per mapping (YAML would silently keep the last)"
_EMPTY = "recipe is empty; expected a YAML mapping with at least 'version', 'base' and 'edits'"


def _expected(what: str) -> PydanticCustomError:
    return PydanticCustomError("recipe", "expected {what}", {"what": what})


def _rule(pattern: str, what: str) -> AfterValidator:
    compiled = re.compile(pattern, re.DOTALL)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise _expected(what)
        return value

    return AfterValidator(check)


def _template(text: str) -> str:
    """Accept ``text`` if its only placeholder is ``{concept}`` (``{{``/``}}`` are literal)."""
    hint = "write literal braces as {{ and }}"
    try:
        fields = [p[1:] for p in string.Formatter().parse(text) if p[1] is not None]
    except ValueError:
        raise _expected(f"balanced braces ({hint})") from None
    for name, spec, conversion in fields:
        if name != "concept" or spec or conversion:
            raise _expected(f"{{concept}} as the only placeholder, not {{{name}}} ({hint})")
    return text


def _layer_ref(value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip():
        return value
    raise _expected("a site module path (string) or a site index (integer >= 0)")


Prompt = Annotated[str, _rule(r".*\S.*", "a non-empty string")]
Template = Annotated[Prompt, AfterValidator(_template)]
_MODEL_REF = r"(?!\s)([~.].*|.*[/\\].*)(?<!\s)"
ModelRef = Annotated[str, _rule(_MODEL_REF, "a Hub id 'org/name' or a local folder ('./...')")]
_SLUG = "a slug: lowercase letters, digits, '.', '_' or '-', starting alphanumeric, <= 64 long"
Slug = Annotated[str, _rule(r"[a-z0-9][a-z0-9._-]{0,63}", _SLUG)]
RepoId = Annotated[str, _rule(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", "a Hub repo id 'org/name'")]
License = Annotated[str, _rule(r"[A-Za-z0-9][A-Za-z0-9.+-]*", "'inherit' or a license id")]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class BaseModelSpec(_Strict):
    """The model to edit: a Hub id or local folder, as diffusers loads it."""

    model: ModelRef
    revision: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    variant: str | None = None


class _EditMixin:
    """Template expansion shared by both edit kinds (``{concept}`` -> :attr:`label`)."""

    @property
    def label(self) -> str:
        raise NotImplementedError

    def _fill(self, templates: list[str]) -> list[str]:
        return [t.format(concept=self.label) for t in templates]

    def originals(self) -> list[str]:
        """The edit's prompts T with ``{concept}`` filled in."""
        return self._fill(self.prompts)

    expanded_prompts = originals

    def expanded_held_out(self) -> list[str]:
        """The held-out paraphrases with ``{concept}`` filled in."""
        return self._fill(self.held_out)


class EraseEdit(_EditMixin, _Strict):
    """Erase a style or object: map each prompt onto an anchor prompt T'."""

    kind: Literal["erase"]
    attribute: Literal["style", "object"]
    concept: Prompt
    prompts: list[Template] = Field(min_length=1)
    target: str | list[str]
    preserve: list[Prompt] = []
    held_out: list[Template] = []

    @field_validator("target", mode="before")
    @classmethod
    def _target_shape(cls, value: Any, info: ValidationInfo) -> Any:
        prompts = info.data.get("prompts")
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and all(isinstance(t, str) and t.strip() for t in value):
            if prompts is None or len(value) == len(prompts):
                return value
            raise _expected(f"one anchor prompt, or a list of {len(prompts)} (one per prompt)")
        raise _expected("an anchor prompt (a string) or a list of them, one per prompt")

    @property
    def label(self) -> str:
        return self.concept

    def targets_expanded(self) -> list[str]:
        """One anchor prompt per original prompt."""
        n = len(self.prompts)
        return [self.target] * n if isinstance(self.target, str) else list(self.target)


class UpdateEdit(_EditMixin, _Strict):
    """Update a fact: map each original prompt onto its target prompt."""

    kind: Literal["update"]
    fact: Prompt
    prompts: list[Template] = Field(min_length=1)
    targets: list[Prompt] = Field(min_length=1)
    preserve: list[Prompt] = []
    held_out: list[Template] = []

    @field_validator("targets")
    @classmethod
    def _targets_length(cls, value: list[str], info: ValidationInfo) -> list[str]:
        n = len(info.data.get("prompts") or value)
        if len(value) not in (1, n):
            raise _expected(f"1 target (shared by all prompts) or {n} (one per prompt)")
        return value

    @property
    def label(self) -> str:
        return self.fact

    def targets_expanded(self) -> list[str]:
        """One target prompt per original prompt (a single target is broadcast)."""
        return self.targets * len(self.prompts) if len(self.targets) == 1 else list(self.targets)


Edit = Annotated[EraseEdit | UpdateEdit, Field(discriminator="kind")]


class LocalizeSettings(_Strict):
    """LocoGen sweep settings; explicit ``layers`` skip the sweep."""

    window: int = Field(1, ge=1)
    prompts_per_edit: int = Field(4, ge=1)
    steps: int = Field(20, ge=1, le=1000)
    guidance: float = Field(7.5, ge=0)
    seeds: list[Annotated[int, Field(ge=0)]] = Field([0], min_length=1)
    scorer: ModelRef = "openai/clip-vit-large-patch14"
    mode: Literal["fast", "full"] = "fast"
    resolution: int | None = Field(None, ge=8, multiple_of=8)
    layers: list[Annotated[Any, AfterValidator(_layer_ref)]] | None = Field(None, min_length=1)

    @field_validator("seeds", mode="before")
    @classmethod
    def _one_seed(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value


class EditSettings(_Strict):
    """LocoEdit closed-form update settings (YAML key ``lambda`` is the field ``lam``)."""

    lam: float = Field(0.1, alias="lambda", gt=0)
    matrices: Literal["key", "value", "both"] = "both"
    tokens: Literal["concept", "last", "all"] = "last"
    preserve_weight: float = Field(1.0, ge=0)


class ExportSettings(_Strict):
    adapter: bool = True
    max_rank: int = Field(64, ge=1)
    energy: float = Field(0.9999, gt=0, le=1)
    kohya: bool = True
    merged: bool = False
    onnx: bool = False


class CardSettings(_Strict):
    description: str | None = None
    license: License = "inherit"


class HubSettings(_Strict):
    repo: RepoId | None = None
    private: bool = True
    branch: Prompt = "main"


class Recipe(_Strict):
    """A whole edit recipe; ``source_text``, ``sha256`` and ``source`` record where it came from."""

    version: int
    name: Slug
    description: str | None = None
    base: BaseModelSpec
    edits: list[Edit] = Field(min_length=1)
    preserve: list[Prompt] = []
    localize: LocalizeSettings = Field(default_factory=LocalizeSettings)
    edit: EditSettings = Field(default_factory=EditSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    card: CardSettings = Field(default_factory=CardSettings)
    hub: HubSettings = Field(default_factory=HubSettings)
    _source_text: str = PrivateAttr("")
    _sha256: str = PrivateAttr("")
    _source: str = PrivateAttr("<recipe>")

    @field_validator("version")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in SUPPORTED_VERSIONS:
            raise _expected(f"a version this locopack reads: {list(SUPPORTED_VERSIONS)}")
        return value

    @property
    def source_text(self) -> str:
        return self._source_text

    @property
    def sha256(self) -> str:
        return self._sha256

    @property
    def source(self) -> str:
        return self._source

    def local_path(self, ref: str) -> str:
        """``ref`` (a model or scorer reference) resolved against the recipe's folder when it
        names a folder there and not in the working directory; otherwise ``ref`` unchanged."""
        here = os.path.expanduser(ref)
        beside = os.path.join(os.path.dirname(os.path.abspath(self._source)), here)
        if not os.path.exists(here) and os.path.exists(beside):
            return beside
        return here if os.path.exists(here) else ref


_SECTIONS = {
    name: Recipe.model_fields[name].annotation
    for name in ("base", "localize", "edit", "export", "card", "hub")
}


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read, parse and validate the recipe file at ``path``.

    Raises:
        RecipeError: for any problem with the file or its content, naming file, line and field.
    """
    source = os.fsdecode(path)
    if os.path.isdir(source):
        raise RecipeError(f"{source}: is a directory; expected a recipe file (YAML)")
    try:
        with open(source, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise RecipeError(f"{source}: no such file") from None
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{source}: cannot read the recipe: {exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"{source}:{line}: not UTF-8 text (byte {data[exc.start]:#04x} at offset "
            f"{exc.start}); save the recipe as UTF-8"
        ) from None
    return _validate(text, source, hashlib.sha256(data).hexdigest())


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    """Parse and validate recipe ``text``; ``source`` names it in errors.

    Raises:
        RecipeError: for any problem with the content.
    """
    try:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    except UnicodeEncodeError as exc:
        raise RecipeError(f"{source}: text cannot be encoded as UTF-8: {exc.reason}") from None
    return _validate(text, source, digest)


def _validate(text: str, source: str, digest: str) -> Recipe:
    root, data = _load_yaml(text, source)
    if data is None:
        raise RecipeError(f"{source}: {_EMPTY}")
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}:{_line(root)}: expected a YAML mapping at the top level (with 'version', "
            f"'base' and 'edits'), found {_show(data)}"
        )
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        typos = {
            (*e["loc"][:-1], _suggest(e["loc"])) for e in errors if e["type"] == "extra_forbidden"
        }
        errors = [e for e in errors if e["type"] != "missing" or tuple(e["loc"]) not in typos]
        raise RecipeError(_join(source, [_problem(e, root, source) for e in errors])) from None
    except RecursionError:
        raise RecipeError(f"{source}: the recipe is nested too deeply") from None
    recipe._source_text, recipe._sha256, recipe._source = text, digest, source
    return recipe


def _load_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    """Compose and construct one YAML document; the node tree gives line numbers."""
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
                    path = _path((*loc, key.value))
                    raise RecipeError(f"{source}:{_line(key)}: {path}: duplicate key{_DUP}")
                keys.add((key.tag, key.value))
        children = [(getattr(k, "value", "?"), v) for k, v in node.value]
    for part, child in children:
        _no_duplicates(child, source, (*loc, part), seen)


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


def _problem(err: dict, root: yaml.Node, source: str) -> str:
    """One line for one pydantic error: file, line, field path, what was expected and found."""
    raw, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx", {})
    loc = tuple(p for i, p in enumerate(raw) if not (i == 2 and raw[0] == "edits"))
    if kind == "extra_forbidden":
        close, names = _suggest(raw), ", ".join(_field_names(raw[:-1]))
        hint = f"did you mean {close!r}?" if close else f"known fields: {names}"
        return (
            f"{source}:{_line(_node_at(root, loc, key=True))}: {_path(loc)}: unknown field; {hint}"
        )
    if kind == "invalid_key":
        found = f"expected field names (strings) as keys, found {_show(raw[-1])}"
        return f"{source}:{_line(_node_at(root, loc[:-1]))}: {_path(loc[:-1])}: {found}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        loc, kind = (*loc, "kind"), "missing" if kind == "union_tag_not_found" else kind
    line = _line(_node_at(root, loc))
    if kind == "missing":
        tags = ", ".join(repr(k) for k in EDIT_KINDS)
        extra = f"; expected one of {tags}" if loc[-1] == "kind" and loc[0] == "edits" else ""
        return f"{source}:{line}: {_path(loc)}: required field is missing{extra}"
    found = repr(ctx["tag"]) if "tag" in ctx else _show(err.get("input"))
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
    return f"{source}:{line}: {_path(loc)}: expected {what}, found {found}{_hint(kind, err)}"


def _hint(kind: str, err: dict) -> str:
    value = err.get("input")
    if kind == "bool_type" and isinstance(value, str):
        return " (a string; write true or false without quotes)"
    if kind in ("int_type", "float_type") and isinstance(value, str):
        return " (a string; write the number without quotes)"
    if kind == "string_type" and isinstance(value, int | float | datetime.date):
        return " (put it in quotes)"
    return ""


def _suggest(loc: tuple) -> str | None:
    close = difflib.get_close_matches(str(loc[-1]), _field_names(loc[:-1]), n=1)
    return close[0] if close else None


def _field_names(loc: tuple) -> list[str]:
    if not loc:
        cls: type[BaseModel] | None = Recipe
    elif loc[0] == "edits" and len(loc) == 3:
        cls = EraseEdit if loc[2] == "erase" else UpdateEdit
    else:
        cls = _SECTIONS.get(loc[0]) if len(loc) == 1 else None
    return [f.alias or n for n, f in cls.model_fields.items()] if cls else []


def _node_at(root: yaml.Node, loc: tuple, key: bool = False) -> yaml.Node:
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


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 1


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and re.fullmatch(r"[\w-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"  # list indices, and keys that need quoting
    return out or "(top level)"


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _join(source: str, problems: list[str]) -> str:
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        return problems[0]
    more = len(problems) - _MAX_PROBLEMS
    lines = [f"{source}: {len(problems)} problems:", *problems[:_MAX_PROBLEMS]]
    return "\n  ".join(lines + ([f"... and {more} more"] if more > 0 else []))


def check_against_model(recipe: Recipe, n_sites: int, site_paths: list[str]) -> None:
    """Check ``localize.window`` and ``localize.layers`` against a model's ordered sites.

    Raises:
        RecipeError: if the window is wider than the model's sites, or a layer is neither one
            of ``site_paths`` nor an index into them.
    """
    try:
        root = yaml.compose(recipe.source_text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None

    def at(loc: tuple, text: str) -> str:
        line = f":{_line(_node_at(root, loc))}" if root is not None else ""
        return f"{recipe.source}{line}: {_path(loc)}: {text}"

    problems, settings = [], recipe.localize
    if settings.window > n_sites:
        text = f"the model has {n_sites} text-conditioning sites; expected at most {n_sites}"
        problems.append(at(("localize", "window"), f"{text}, found {settings.window}"))
    for i, layer in enumerate(settings.layers or []):
        if isinstance(layer, int) and layer >= len(site_paths):
            text = f"expected a site index below {len(site_paths)}, found {layer}"
        elif isinstance(layer, str) and layer not in site_paths:
            close = difflib.get_close_matches(layer, site_paths, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the first is {site_paths[:1]}"
            text = f"expected a site module path of this model, found {_show(layer)}; {hint}"
        else:
            continue
        problems.append(at(("localize", "layers", i), text))
    if problems:
        raise RecipeError(_join(recipe.source, problems))


def resolve_layers(recipe: Recipe, site_paths: list[str]) -> list[str] | None:
    """Explicit layers as site module paths in the recipe's order, or None to localize."""
    if recipe.localize.layers is None:
        return None
    check_against_model(recipe, len(site_paths), site_paths)
    paths = [site_paths[x] if isinstance(x, int) else x for x in recipe.localize.layers]
    return list(dict.fromkeys(paths))


def summarize(recipe: Recipe) -> str:
    """A readable multi-line summary of ``recipe`` (what ``locopack validate`` prints)."""
    base, loc, ed, ex, hub = recipe.base, recipe.localize, recipe.edit, recipe.export, recipe.hub
    lines = [f"recipe    {recipe.name} (version {recipe.version}, sha256 {recipe.sha256[:12]})"]
    lines += [f"          {recipe.description}"] if recipe.description else []
    revision = f" @ {base.revision}" if base.revision else ""
    variant = f", variant {base.variant}" if base.variant else ""
    lines.append(f"base      {base.model}{revision} ({base.dtype}{variant})")
    for i, edit in enumerate(recipe.edits):
        what = f"{edit.attribute} " if isinstance(edit, EraseEdit) else "fact "
        lines.append(f"edit [{i}]  {edit.kind} {what}{edit.label!r}")
        lines.append(f"          {len(edit.prompts)} prompt(s), e.g. {edit.originals()[0]!r}")
        targets = list(dict.fromkeys(edit.targets_expanded()))
        more = f" (+{len(targets) - 3} more)" if len(targets) > 3 else ""
        lines.append(f"          -> {', '.join(repr(t) for t in targets[:3])}{more}")
        lines.append(f"          preserve {len(edit.preserve)}, held-out {len(edit.held_out)}")
    lines += [f"preserve  {len(recipe.preserve)} recipe-wide prompt(s)"] if recipe.preserve else []
    if loc.layers is not None:
        lines.append(f"layers    {', '.join(map(str, loc.layers))} (localization skipped)")
    else:
        res = f", resolution {loc.resolution}" if loc.resolution else ""
        sweep = f"{loc.steps} steps, guidance {loc.guidance}, seeds {loc.seeds}{res}"
        lines.append(f"localize  window {loc.window}, {loc.prompts_per_edit} prompts/edit, {sweep}")
        lines.append(f"          {loc.mode} mode, scorer {loc.scorer}")
    solve = f"matrices {ed.matrices}, tokens {ed.tokens}, preserve weight {ed.preserve_weight}"
    lines.append(f"edit      lambda {ed.lam}, {solve}")
    kinds = [k for k in ("adapter", "kohya", "merged", "onnx") if getattr(ex, k)] or ["nothing"]
    lines.append(f"export    {', '.join(kinds)} (max rank {ex.max_rank}, energy {ex.energy})")
    lines.append(f"card      license {recipe.card.license}")
    where = f"{hub.repo} ({'private' if hub.private else 'public'}, branch {hub.branch})"
    lines.append(f"hub       {where if hub.repo else 'not pushed (no hub.repo)'}")
    return "\n".join(lines)
