"""LocoEdit's columns for the joint-attention transformers (SD3/SD3.5, FLUX.1), site by site.

A site's key/value inputs are collected at real denoising points (:mod:`locopack.edit.stream`),
and the window's sites are solved in execution order:

- ``X_i``: site i's inputs for the original prompts, with the deltas of the sites before it
  applied (re-collected after each edit, since an edit upstream changes the text stream that
  reaches it);
- ``Y_i``: its inputs for the target prompts in the unedited model, at the originals' latents
  and timesteps and with the targets' own pooled vectors: the edited model on the original
  prompt should produce there the keys and values the unedited model produces for the target;
- ``P_i``: the preserve prompts' inputs, at their own latents, with the edits upstream applied.

Each (prompt, position) pair contributes one column per probe (seeds x timesteps).  The
projections have biases; ``W' x + b = W y + b`` makes the bias cancel, so the closed form of
:mod:`locopack.edit.closed_form` is exact with them (a target that included the bias would have
the updated layer add it again), and :func:`joint_errors` reports residuals relative to the
outputs including it.

Sites that also map image tokens (FLUX single-stream blocks, ``Site.text_only`` False) are
refused unless the recipe sets ``edit.allow_image_sites``; then their text rows form the
columns, the weight change applies to every image token as well, and the provenance lists them
under ``image_sites`` for the card to say so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch

from ..delta import WeightDelta
from ..errors import EditError
from ..models.base import Site
from .closed_form import EditSystem, edit_report
from .stream import Group, denoising_steps, record_probes, site_columns
from .tokens import EditPrompts

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily
    from ..recipe.schema import EditSettings, Recipe

#: solves one site: its module paths -> float32 deltas, from the site and its factored system
SiteSolver = Callable[[Site, EditSystem], dict[str, torch.Tensor]]


class JointColumns:
    """The probes and text inputs of one edit, and the columns each site reads from them."""

    @torch.no_grad()
    def __init__(
        self,
        pipe: DiffusionPipeline,
        family: type[ModelFamily],
        recipe: Recipe,
        prompts: EditPrompts,
    ) -> None:
        self.transformer = pipe.transformer

        def group(texts: list[str], probes: list[dict]) -> Group:
            return Group(family.text_arguments(pipe, texts), probes)

        probes = record_probes(pipe, family, prompts.originals, recipe)
        self.originals = group(prompts.originals, probes)
        self.targets = group(prompts.targets, probes)
        self.preserve = None
        if prompts.preserve:
            preserve_probes = record_probes(pipe, family, prompts.preserve, recipe)
            self.preserve = group(prompts.preserve, preserve_probes)
        self.x_picks = [(k, i) for k, i, _ in prompts.pairs]
        self.y_picks = [(k, j) for k, _, j in prompts.pairs]
        self.p_picks = prompts.preserve_at

    def targets_at(self, sites: list[Site]) -> dict[str, torch.Tensor]:
        """Y of every site (one pass), as the model is now."""
        return site_columns(self.transformer, sites, self.targets, self.y_picks)

    def edited_at(self, sites: list[Site]) -> tuple[dict, dict | None]:
        """X and P of every site (None without preserve prompts), as the model is now."""
        x = site_columns(self.transformer, sites, self.originals, self.x_picks)
        if self.preserve is None:
            return x, None
        return x, site_columns(self.transformer, sites, self.preserve, self.p_picks)


class SiteColumns(Protocol):
    """What collects a site's columns as the model is now (:class:`JointColumns`, the
    refiner's)."""

    def targets_at(self, sites: list[Site]) -> dict[str, torch.Tensor]: ...

    def edited_at(self, sites: list[Site]) -> tuple[dict, dict | None]: ...


def _checked(sites: list[Site], recipe: Recipe, family: type[ModelFamily]) -> list[Site]:
    image = [site.path for site in sites if not site.text_only]
    if image and not recipe.edit.allow_image_sites:
        raise EditError(
            f"{image[0]} is a {family.pretty_name} single-stream site: its key/value projections "
            "map the image tokens too, so an edit there is not text-only; set "
            "edit.allow_image_sites: true to edit it anyway (the card then says so), or "
            "choose double-stream blocks (transformer_blocks.*)"
        )
    return sorted(sites, key=lambda site: site.index)


@torch.no_grad()
def solve_in_order(
    transformer: torch.nn.Module,
    columns: SiteColumns,
    sites: list[Site],
    settings: EditSettings,
    solve: SiteSolver,
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Solve ``sites`` (in execution order) one by one, each on the X and P that ``columns``
    (``targets_at``/``edited_at``) collects with the deltas of the sites before it applied,
    and Y from the unedited model.

    Returns:
        The deltas and the column counts (``columns``, ``preserve_columns``; every site's).
    """
    targets = columns.targets_at(sites)
    deltas: dict[str, torch.Tensor] = {}
    for site in sites:
        with WeightDelta(dict(deltas)).applied(transformer):
            x, p = columns.edited_at([site])
        preserve = None if p is None else p[site.path]
        system = EditSystem.build(
            x[site.path], targets[site.path], settings.lam, preserve, settings.preserve_weight
        )
        deltas.update(solve(site, system))
    counts = {
        "columns": int(system.x.shape[1]),
        "preserve_columns": 0 if preserve is None else int(preserve.shape[1]),
    }
    return deltas, counts


@torch.no_grad()
def joint_deltas(
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    recipe: Recipe,
    sites: list[Site],
    prompts: EditPrompts,
    solve: SiteSolver,
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """LocoEdit of ``sites`` in execution order, each solved by ``solve`` on columns collected
    with the deltas of the sites before it applied.

    Returns:
        ``(deltas, provenance entries)``: the column counts and how the inputs were collected.

    Raises:
        EditError: a site maps image tokens and the recipe does not allow it; a failed solve.
    """
    sites = _checked(sites, recipe, family)
    settings = recipe.edit
    columns = JointColumns(pipe, family, recipe, prompts)
    deltas, counts = solve_in_order(pipe.transformer, columns, sites, settings, solve)
    return deltas, {
        **counts,
        "collection": {
            "seeds": list(settings.seeds),
            "timesteps": list(settings.timesteps),
            "steps": denoising_steps(recipe.localize.steps, settings.timesteps),
            "of_steps": recipe.localize.steps,
            "guidance": recipe.localize.guidance,
            "resolution": recipe.localize.resolution,
        },
        "image_sites": [site.path for site in sites if not site.text_only],
    }


@torch.no_grad()
def joint_errors(
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    recipe: Recipe,
    sites: list[Site],
    prompts: EditPrompts,
    delta: WeightDelta,
) -> dict[str, dict]:
    """Per edited matrix, :func:`~locopack.edit.closed_form.edit_report` on the columns the
    solve used (each site's inputs with every edit upstream applied; an edit does not reach its
    own site's inputs), with the layer's bias in the size of the outputs."""
    sites = sorted(sites, key=lambda site: site.index)
    columns = JointColumns(pipe, family, recipe, prompts)
    return ordered_errors(pipe.transformer, columns, sites, delta)


@torch.no_grad()
def ordered_errors(
    transformer: torch.nn.Module, columns: SiteColumns, sites: list[Site], delta: WeightDelta
) -> dict[str, dict]:
    """:func:`~locopack.edit.closed_form.edit_report` per edited matrix of ``sites`` (in
    execution order) on the columns :func:`solve_in_order` used, with the layer's bias (if
    any) in the size of the outputs."""
    targets = columns.targets_at(sites)
    before, _ = columns.edited_at(sites)
    with delta.applied(transformer):
        x, p = columns.edited_at(sites)
    by_module = {m: site for site in sites for m in (site.key, site.value)}
    report = {}
    for module, d in delta.deltas.items():
        path = by_module[module].path
        layer = transformer.get_submodule(module)
        bias = getattr(layer, "bias", None)
        preserve = None if p is None else p[path]
        entry = edit_report(layer.weight, d, x[path], targets[path], preserve, bias)
        unedited = edit_report(layer.weight, d, before[path], targets[path], None, bias)
        entry["error_before"] = unedited["error_before"]
        report[module] = entry
    return report
