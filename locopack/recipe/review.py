"""Reviewing a loaded recipe: against a model's sites, and as a summary for a reader.

:func:`check_against_model` and :func:`resolve_layers` need the model's ordered
text-conditioning sites, which the schema cannot know; :func:`summarize` is what
``locopack validate`` prints.  All three take an already validated
:class:`~locopack.recipe.schema.Recipe`; the schema is imported for type checking only, since
:mod:`locopack.recipe.schema` re-exports these functions.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TYPE_CHECKING

from locopack.control_chars import strip_controls
from locopack.errors import RecipeError
from locopack.recipe.errors import Locator, field_path, join_problems, show
from locopack.recipe.yaml_limits import load_yaml

if TYPE_CHECKING:
    from locopack.recipe.schema import Recipe


def located(recipe: Recipe) -> Callable[[tuple, str], str]:
    """A function ``(loc, text) -> "<file>:<line>: <field.path>: <text>"`` for ``recipe``
    (without a line where the recipe has no source text)."""
    root = load_yaml(recipe.source_text, recipe.source)[0] if recipe.source_text else None
    locator = Locator(root)

    def at(loc: tuple, text: str) -> str:
        line = f":{locator.line(loc)}" if root is not None else ""
        return f"{recipe.source}{line}: {field_path(loc)}: {text}"

    return at


def model_problems(
    recipe: Recipe,
    n_sites: int,
    site_paths: list[str],
    refused: Callable[[str], str] | None = None,
) -> list[str]:
    """The located problems of ``localize.window`` and ``localize.layers`` against a model's
    ordered sites ([] if none): a window wider than the sites, a layer that is no site (with
    ``refused(layer)`` as the reason where it gives one: the family's
    ``not_a_site_reason``), a site named twice (also once by its path and once by its index);
    :func:`check_against_model` raises them."""
    at, problems, settings = located(recipe), [], recipe.localize
    if settings.window > n_sites:
        text = f"the model has {n_sites} text-conditioning sites; expected at most {n_sites}"
        problems.append(at(("localize", "window"), f"{text}, found {settings.window}"))
    first: dict[str, int] = {}  # site path -> where localize.layers first names it
    for i, layer in enumerate(settings.layers or []):
        if isinstance(layer, int) and layer >= len(site_paths):
            text = f"expected a site index below {len(site_paths)}, found {layer}"
        elif isinstance(layer, str) and layer not in site_paths:
            close = difflib.get_close_matches(layer, site_paths, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the first is {site_paths[:1]}"
            hint = (refused(layer) if refused else "") or hint
            text = f"expected a site module path of this model, found {show(layer)}; {hint}"
        else:
            path = site_paths[layer] if isinstance(layer, int) else layer
            if path not in first:
                first[path] = i
                continue
            text = (
                f"expected each site once, found {show(layer)}, the site {path!r} that "
                f"localize.layers[{first[path]}] names already; remove one"
            )
        problems.append(at(("localize", "layers", i), text))
    return problems


def check_against_model(recipe: Recipe, n_sites: int, site_paths: list[str]) -> None:
    """Check ``localize.window`` and ``localize.layers`` against a model's ordered sites.

    Raises:
        RecipeError: if the window is wider than the model's sites, a layer is neither one
            of ``site_paths`` nor an index into them, or two layers name the same site.
    """
    problems = model_problems(recipe, n_sites, site_paths)
    if problems:
        raise RecipeError(join_problems(recipe.source, problems))


def resolve_layers(recipe: Recipe, site_paths: list[str]) -> list[str] | None:
    """Explicit layers as site module paths in the recipe's order, or None to localize."""
    if recipe.localize.layers is None:
        return None
    check_against_model(recipe, len(site_paths), site_paths)
    return [site_paths[x] if isinstance(x, int) else x for x in recipe.localize.layers]


def summarize(recipe: Recipe) -> str:
    """A readable multi-line summary of ``recipe`` (what ``locopack validate`` prints),
    without the control characters and escape sequences its text may carry."""
    base, loc, ed, hub = recipe.base, recipe.localize, recipe.edit, recipe.hub
    lines = [f"recipe    {recipe.name} (version {recipe.version}, sha256 {recipe.sha256[:12]})"]
    description = (recipe.description or "").strip().splitlines()
    lines += [f"          {line}" for line in description]
    revision = f" @ {base.revision}" if base.revision else ""
    variant = f", variant {base.variant}" if base.variant else ""
    lines.append(f"base      {base.model}{revision} ({base.dtype}{variant})")
    for i, edit in enumerate(recipe.edits):
        lines.append(f"edit [{i}]  {edit.kind} {edit.subject.removeprefix('the ')} {edit.label!r}")
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
    lines += _export_lines(recipe)
    lines.append(f"card      license {recipe.card.license}")
    where = f"{hub.repo} ({'private' if hub.private else 'public'}, branch {hub.branch})"
    lines.append(f"hub       {where if hub.repo else 'not pushed (no hub.repo)'}")
    return strip_controls("\n".join(lines))


def _export_lines(recipe: Recipe) -> list[str]:
    """The exports and the files ``build`` writes for them, decided as the build decides them
    (:class:`~locopack.export.formats.ExportChoice`) for the base's family where its configs
    are on this machine."""
    from locopack.export.formats import ExportChoice, export_formats

    ex, family = recipe.export, _base_family(recipe)
    choice = ExportChoice.from_recipe(ex, family)
    kinds = ", ".join(choice.formats()) or "nothing"
    lines = [f"export    {kinds} (max rank {ex.max_rank}, energy {ex.energy})"]
    lines += [f"          build writes {', '.join(choice.files(family)) or 'no export file'}"]
    asked = ex.asked()
    for fmt in export_formats():
        if family is None and fmt.name in choice and fmt.only_for:
            why = "the base's configs are not on this machine to tell its family"
            files = ", ".join(fmt.files(None))
            lines.append(f"          {files} only for {fmt.only_for} ({why})")
        elif family is not None and asked.get(fmt.name) and fmt.name not in choice:
            lines.append(f"          no {fmt.name} file: {fmt.refusal(family)}")
    return lines


def _base_family(recipe: Recipe):
    """The family of the recipe's base from its configs on this machine (a local pipeline
    folder or release, or a Hub model in the local cache; nothing is downloaded), or None."""
    import os

    from huggingface_hub import try_to_load_from_cache

    from locopack.errors import LocopackError
    from locopack.filenames import MERGED_DIR, PIPELINE_INDEX
    from locopack.hub_ref import is_hub_id
    from locopack.models.loading import model_layout

    ref = recipe.local_path(recipe.base.model)
    folders = [ref, os.path.join(ref, MERGED_DIR)]
    if not os.path.exists(ref) and is_hub_id(ref):
        names = (PIPELINE_INDEX, f"{MERGED_DIR}/{PIPELINE_INDEX}")
        found = [try_to_load_from_cache(ref, n, revision=recipe.base.revision) for n in names]
        folders = [os.path.dirname(f) for f in found if isinstance(f, str)]
    for folder in folders:
        if os.path.isfile(os.path.join(folder, PIPELINE_INDEX)):
            try:
                return model_layout(folder)[0]
            except (LocopackError, OSError):
                return None
    return None
