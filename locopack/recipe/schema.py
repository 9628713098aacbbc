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

The module holds the schema and the entry points that read a recipe.  Reading the file and its
YAML within hard limits (size, nesting, keys, alias expansion) lives in
:mod:`locopack.recipe.yaml_limits`; turning pydantic errors into located lines in
:mod:`locopack.recipe.errors`; checking a loaded recipe against a model and summarizing it in
:mod:`locopack.recipe.review`; the checks that need no model run (paths, Hub ids, concepts,
pairs, the window) in :mod:`locopack.recipe.checks`; the keys that registries define (export
formats, detector names) in :mod:`locopack.recipe.registered`.  :mod:`locopack.recipe` re-exports
the public names of all of them.
"""

from __future__ import annotations

import hashlib
import os
import re
import string
from typing import Annotated, ClassVar, Literal

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
from locopack.export.formats import export_formats
from locopack.recipe.attacks import AttacksSettings
from locopack.recipe.errors import line_of, show, validation_message
from locopack.recipe.registered import (
    DetectorSpec,
    ExportSettings,
    exported_formats,
    set_export_fields,
)
from locopack.recipe.requirements import Requirements
from locopack.recipe.yaml_limits import load_yaml, read_text

SUPPORTED_VERSIONS = (1,)
EDIT_KINDS = ("erase", "update")
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


def _layer_ref(value: object) -> str | int:
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
#: a random seed: torch.Generator.manual_seed takes any 64-bit value, and a seed must also fit
#: the signed 64-bit integers of JSON readers and tensors; 2**64 would fail at the first image
Seed = Annotated[int, Field(ge=0, lt=2**63)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class BaseModelSpec(_Strict):
    """The model to edit: a Hub id or local folder, as diffusers loads it."""

    model: ModelRef
    revision: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    variant: str | None = None
    #: T5 tokens per prompt for SD3/FLUX (the pipelines' ``max_sequence_length``; FLUX.1-dev
    #: takes up to 512, schnell 256); None: the family's default
    max_sequence_length: int | None = Field(None, ge=1, le=512)
    #: an EC public key (PEM; relative to the recipe): the base must be a locopack release
    #: whose signature verifies against it, or the build stops before loading it
    public_key: str | None = None


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
    requirements: Requirements = Field(default_factory=Requirements)

    @field_validator("requirements")
    @classmethod
    def _no_new_fact(cls, value: Requirements) -> Requirements:
        if value.target_shown not in (None, False):
            raise _expected("no target_shown in an erase's requirements (only an update has one)")
        return value

    @field_validator("target", mode="before")
    @classmethod
    def _target_shape(cls, value: object, info: ValidationInfo) -> object:
        prompts = info.data.get("prompts")
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, list) and all(isinstance(t, str) and t.strip() for t in value):
            if prompts is None or len(value) == len(prompts):
                return value
            raise _expected(f"one anchor prompt, or a list of {len(prompts)} (one per prompt)")
        raise _expected("an anchor prompt (a string) or a list of them, one per prompt")

    #: the model-card tag of this kind of edit
    card_tag: ClassVar[str] = "concept-erasure"
    #: the CLIP score that shows the edit working, and its direction: away from the original
    success_score: ClassVar[tuple[str, int]] = ("original", -1)

    @property
    def label(self) -> str:
        return self.concept

    #: an anchor prompt must not name the erased concept
    removes_label: ClassVar[bool] = True

    @property
    def subject(self) -> str:
        """What is edited, in words (``the style``, ``the object``)."""
        return f"the {self.attribute}"

    def target_field(self, j: int) -> tuple:
        """Where the ``j``-th prompt's anchor is written in the recipe (a ``loc`` path)."""
        return ("target", j) if isinstance(self.target, list) else ("target",)

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
    requirements: Requirements = Field(default_factory=Requirements)

    @field_validator("targets")
    @classmethod
    def _targets_length(cls, value: list[str], info: ValidationInfo) -> list[str]:
        n = len(info.data.get("prompts") or value)
        if len(value) not in (1, n):
            raise _expected(f"1 target (shared by all prompts) or {n} (one per prompt)")
        return value

    card_tag: ClassVar[str] = "knowledge-editing"
    #: towards the target prompt
    success_score: ClassVar[tuple[str, int]] = ("target", +1)
    subject: ClassVar[str] = "the fact"
    removes_label: ClassVar[bool] = False

    def target_field(self, j: int) -> tuple:
        """Where the ``j``-th prompt's target is written in the recipe (a ``loc`` path)."""
        return ("targets", j if len(self.targets) > 1 else 0)

    @property
    def label(self) -> str:
        return self.fact

    def targets_expanded(self) -> list[str]:
        """One target prompt per original prompt (a single target is broadcast)."""
        return self.targets * len(self.prompts) if len(self.targets) == 1 else list(self.targets)


Edit = Annotated[EraseEdit | UpdateEdit, Field(discriminator="kind")]


class LocalizeSettings(_Strict):
    """LocoGen sweep settings; explicit ``layers`` skip the sweep.  ``select``: ``score`` edits
    LocoGen's best window; ``editable`` checks that window's edit against the edits'
    efficacy requirements and widens it until they hold (:mod:`locopack.localize.editable`)."""

    window: int = Field(1, ge=1)
    prompts_per_edit: int = Field(4, ge=1)
    steps: int = Field(20, ge=1, le=1000)
    guidance: float = Field(7.5, ge=0)
    seeds: list[Seed] = Field([0], min_length=1)
    scorer: ModelRef = "openai/clip-vit-large-patch14"
    mode: Literal["fast", "full"] = "fast"
    select: Literal["score", "editable"] = "score"
    resolution: int | None = Field(None, ge=8, multiple_of=8)
    layers: list[Annotated[object, AfterValidator(_layer_ref)]] | None = Field(None, min_length=1)

    @field_validator("seeds", mode="before")
    @classmethod
    def _one_seed(cls, value: object) -> object:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value


class PromptSample(_Strict):
    """``count`` prompts drawn (``seed``) from ``source``: ``toy`` or ``toy-deep`` (a toy
    world's captions) or a prompt file relative to the recipe (:mod:`locopack.prompt_samples`)."""

    count: int = Field(ge=1, le=1000)
    source: Prompt
    seed: Seed = 0


#: an attack's registered name (:mod:`locopack.pipeline.robust_attacks` lists them)
AttackName = Annotated[str, _rule(r"[a-z][a-z0-9_-]{0,31}", "an attack's name, e.g. search")]


class RobustSettings(_Strict):
    """``edit.robust``: robust erase (:mod:`locopack.pipeline.robust_erase`), off by default.
    After LocoEdit, up to ``rounds`` times: run ``attacks`` on the edited model, add the
    ``prompts`` best prompts each found per erase edit as extra edit rows mapped to that
    edit's target, and solve again; it stops once every erase edit's attack success is at most
    its ``attack_success`` requirement (0.10 where none is stated).  The word search
    (``search``) runs ``evidence.attack.steps`` evaluations, whatever the time (its
    ``seconds`` limits the evidence's search only), so every machine solves the same rows;
    ``seconds`` is a guard on each round's search (off by default): where it stops one, the
    round records it and the result depends on the machine."""

    rounds: int = Field(3, ge=1, le=20)
    attacks: list[AttackName] = Field(["search"], min_length=1)
    prompts: int = Field(4, ge=1, le=64)
    seconds: float | None = Field(None, gt=0)

    @field_validator("attacks")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise _expected("each attack named once")
        return value


class EditSettings(_Strict):
    """LocoEdit closed-form update settings (YAML key ``lambda`` is the field ``lam``)."""

    lam: float = Field(0.1, alias="lambda", gt=0)
    matrices: Literal["key", "value", "both"] = "both"
    #: which token rows form the edit's columns (:mod:`locopack.edit.tokens`); ``cover`` reaches
    #: the concept in every encoder's part of the text sequence, ``last`` one token of the first
    tokens: Literal["cover", "last", "concept", "all", "sequence"] = "cover"
    preserve_weight: float = Field(1.0, ge=0)
    #: prompts nobody listed that the edit keeps too (added to the preserve prompts)
    neighbours: PromptSample | None = None
    # joint-attention families (SD3, FLUX) only: the latents (seeds) and the points of the
    # localization's denoising run (0 = first step, 1 = last) at which the sites' key/value
    # inputs are collected; and whether sites that also map image tokens may be edited
    seeds: list[Seed] = Field([0, 1], min_length=1)
    timesteps: list[Annotated[float, Field(ge=0, le=1)]] = Field([0.0, 0.5, 1.0], min_length=1)
    allow_image_sites: bool = False
    robust: RobustSettings | None = None


class AttackSettings(_Strict):
    """The evidence's search attack on each erase edit (:mod:`locopack.evidence.attacks.search`):
    ``tokens`` words searched in place of the concept, ``candidates`` tried per position, at
    most ``steps`` images (0: no search) and ``seconds`` per model, deterministic under
    ``seed``; its ``confirm`` best prompts are drawn with every evidence seed and the one with
    the highest rate is its find (``confirm - 1`` more prompts drawn per seed and model)."""

    tokens: int = Field(2, ge=1, le=16)
    candidates: int = Field(4, ge=1)
    steps: int = Field(8, ge=0)
    seconds: float = Field(60.0, gt=0)
    seed: Seed = 0
    confirm: int = Field(8, ge=1, le=64)


class EvidenceSettings(_Strict):
    """What the before/after evidence draws and measures: ``detectors`` run on every image;
    ``seeds`` (default: the localization's first seed) draw each prompt; ``unrelated`` prompts
    replace the built-in ones, ``sample_unrelated`` adds prompts no part of the recipe lists
    (nor ``edit.neighbours``); a preserve or unrelated prompt whose images' mean SSIM (before
    vs after, same seed) falls below ``ssim_threshold`` is flagged on the card; ``attack``
    budgets the word search attack, ``attacks`` the others (:mod:`locopack.recipe.attacks`)."""

    detectors: list[DetectorSpec] = Field(default_factory=lambda: [DetectorSpec(name="clip")])
    seeds: list[Seed] | None = Field(None, min_length=1)
    unrelated: list[Prompt] | None = Field(None, min_length=1)
    sample_unrelated: PromptSample | None = None
    ssim_threshold: float = Field(0.8, gt=0, le=1)
    attack: AttackSettings = Field(default_factory=AttackSettings)
    attacks: AttacksSettings = Field(default_factory=AttacksSettings)


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
    evidence: EvidenceSettings = Field(default_factory=EvidenceSettings)
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
        """``ref`` (a model or scorer reference) as a path when it names something on disk:
        an absolute (or ``~``) path as written, a relative one resolved against the recipe's
        folder only, never the working directory (a ``./model`` there must not stand in for
        the one beside the recipe); otherwise ``ref`` unchanged (a Hub id)."""
        path = os.path.expanduser(ref)
        if not os.path.isabs(path):
            path = os.path.join(os.path.dirname(os.path.abspath(self._source)), path)
        spelled_as_path = ref.startswith(("./", "../", "~", ".\\", "..\\")) or os.path.isabs(ref)
        return path if spelled_as_path or os.path.lexists(path) else ref


def sync_export_formats() -> None:
    """Give :class:`ExportSettings` one boolean field per registered export format where the
    registry changed since the last call (:func:`~locopack.recipe.registered.set_export_fields`),
    and rebuild :class:`Recipe` around it: a recipe is validated against the registry as it is."""
    if exported_formats() != [f.name for f in export_formats()]:
        set_export_fields()
        Recipe.model_rebuild(force=True)


_SECTIONS = {
    name: Recipe.model_fields[name].annotation
    for name in ("base", "localize", "edit", "export", "evidence", "card", "hub")
}


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read, parse and validate the recipe file at ``path``.

    Raises:
        RecipeError: for any problem with the file or its content, naming file, line and field.
    """
    source = os.fsdecode(path)
    text, digest = read_text(source)
    return _validate(text, source, digest)


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    """Parse and validate recipe ``text``; ``source`` names it in errors.

    Raises:
        RecipeError: for any problem with the content.
    """
    try:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    except UnicodeEncodeError as exc:
        line = text[: exc.start].count("\n") + 1
        problem = f"text cannot be encoded as UTF-8: {exc.reason}"
        raise RecipeError(f"{source}:{line}: {problem}") from None
    return _validate(text, source, digest)


def _validate(text: str, source: str, digest: str) -> Recipe:
    root, data = load_yaml(text, source)
    if data is None:
        raise RecipeError(f"{source}: {_EMPTY}")
    if not isinstance(data, dict):
        raise RecipeError(
            f"{source}:{line_of(root)}: expected a YAML mapping at the top level (with 'version', "
            f"'base' and 'edits'), found {show(data)}"
        )
    sync_export_formats()
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        message = validation_message(exc, root, source, _field_names, EDIT_KINDS)
        raise RecipeError(message) from None
    recipe._source_text, recipe._sha256, recipe._source = text, digest, source
    return recipe


def _field_names(loc: tuple) -> list[str]:
    """The YAML keys of the mapping at ``loc`` (for "did you mean"); [] where not a model."""
    if not loc:
        cls: type[BaseModel] | None = Recipe
    elif loc[0] == "edits" and len(loc) == 3:
        cls = EraseEdit if loc[2] == "erase" else UpdateEdit
    else:
        cls = _SECTIONS.get(loc[0]) if len(loc) == 1 else None
    return [f.alias or n for n, f in cls.model_fields.items()] if cls else []
