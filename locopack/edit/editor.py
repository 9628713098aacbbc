"""LocoEdit on a loaded pipeline: collect the edit's token states, solve every chosen matrix.

All edits of a recipe (erase and update, any number of concepts) are solved jointly: their
token pairs become the columns of one X and one Y, and preserve prompts (per edit and
recipe-wide) the columns of P.  Sites that read the same states share one factored system
(:class:`~locopack.edit.closed_form.EditSystem`); a family that normalizes the text per site
(DeepFloyd IF) gets one system per site.  In the joint-attention transformers (SD3, FLUX) every
site reads a text stream of its own, collected while denoising and solved site by site
(:mod:`locopack.edit.joint`); in text-refiner transformers (Z-Image) every site reads the
refiner stream, computed from the prompt and solved site by site (:mod:`locopack.edit.refiner`).

Extra rows (robust erase): ``extra`` ``(prompt, target)`` pairs join the columns like the
recipe's prompts (:func:`~locopack.edit.tokens.edit_prompts`); the delta records them under
``extra_rows`` (:func:`extra_rows` reads them back), so that the solve can be repeated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..delta import WeightDelta, library_versions
from ..delta_record import DeltaProvenance
from ..errors import EditError
from ..fingerprint import fingerprints_by_dtype, model_fingerprint
from ..prompt_samples import neighbours
from ..record import JsonObject
from .closed_form import EditSystem, edit_report
from .joint import joint_deltas, joint_errors
from .refiner import refiner_deltas, refiner_errors
from .tokens import EditPrompts, edit_prompts

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily
    from ..recipe.schema import Recipe

_MATRICES = {"key": (0,), "value": (1,), "both": (0, 1)}


@dataclass
class EditStates:
    """Encoded prompts and the token positions whose states form X, Y and P."""

    originals: torch.Tensor  # (N, L, D) states the sites receive for the original prompts
    targets: torch.Tensor  # (N, L, D) for their targets
    pairs: list[tuple[int, int, int]]  # (prompt, position in original, position in target)
    preserve: torch.Tensor | None  # (P, L, D)
    preserve_at: list[tuple[int, int]]  # (prompt, position)

    def columns(
        self, transform=lambda s: s
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """X, Y (D x n) and P (D x p) in float64 after ``transform`` (a site's own states)."""
        orig, targ = transform(self.originals), transform(self.targets)
        x = torch.stack([orig[k, i] for k, i, _ in self.pairs], dim=1)
        y = torch.stack([targ[k, j] for k, _, j in self.pairs], dim=1)
        p = None
        if self.preserve is not None:
            pres = transform(self.preserve)
            p = torch.stack([pres[k, i] for k, i in self.preserve_at], dim=1).to(torch.float64)
        return x.to(torch.float64), y.to(torch.float64), p


@torch.no_grad()
def collect_states(
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    recipe: Recipe,
    prompts: EditPrompts | None = None,
) -> EditStates:
    """Encode every edit's prompts and targets (``prompts``: as :func:`edit_prompts` picks
    them, the token pairs of ``edit.tokens``)."""
    prompts = prompts or edit_prompts(pipe, family, recipe)
    return EditStates(
        originals=family.encode(pipe, prompts.originals),
        targets=family.encode(pipe, prompts.targets),
        pairs=prompts.pairs,
        preserve=family.encode(pipe, prompts.preserve) if prompts.preserve else None,
        preserve_at=prompts.preserve_at,
    )


def extra_rows(provenance: DeltaProvenance) -> list[tuple[str, str]]:
    """The extra ``(prompt, target)`` rows a delta was solved with (none for a plain edit)."""
    return [(row.prompt, row.target) for row in provenance.extra_rows]


@torch.no_grad()
def compute_delta(
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    recipe: Recipe,
    layers: list[str],
    *,
    fingerprint: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
) -> WeightDelta:
    """Solve LocoEdit for the key and/or value matrices of ``layers`` (site module paths),
    with the ``extra`` ``(prompt, target)`` rows beside the recipe's.

    Returns:
        A :class:`WeightDelta` with one ΔW per edited projection and the edit's provenance
        (``token_rows``: which positions of which encoder each edit prompt's columns read).

    Raises:
        EditError: a layer is not a site of the model, or the solve is not finite.
    """
    denoiser = getattr(pipe, family.denoiser_attr)
    sites = {site.path: site for site in family.sites(denoiser)}
    missing = [path for path in layers if path not in sites]
    if missing:
        raise EditError(
            f"{missing[0]!r} is not a text-conditioning site of this model; "
            "run `locopack layers MODEL` to list them"
        )
    settings = recipe.edit

    def solve(site, system: EditSystem) -> dict[str, torch.Tensor]:
        return {
            module: system.delta(denoiser.get_submodule(module).weight).to(torch.float32)
            for module in _modules(site, settings.matrices)
        }

    prompts = edit_prompts(pipe, family, recipe, extra)
    if family.joint_attention or family.refines_text:
        chosen = [sites[path] for path in layers]
        solver = refiner_deltas if family.refines_text else joint_deltas
        deltas, entries = solver(pipe, family, recipe, chosen, prompts, solve)
        counts = {
            "columns": entries.pop("columns"),
            "preserve_columns": entries.pop("preserve_columns"),
        }
    else:
        states = collect_states(pipe, family, recipe, prompts)
        counts = {"columns": len(states.pairs), "preserve_columns": len(states.preserve_at)}
        deltas, entries = {}, {}
        shared: EditSystem | None = None
        for path in layers:
            site = sites[path]
            per_site = family.site_states(denoiser, site, states.originals) is not states.originals
            if per_site or shared is None:
                x, y, p = states.columns(
                    (lambda s, site=site: family.site_states(denoiser, site, s))
                    if per_site
                    else (lambda s: s)
                )
                system = EditSystem.build(x, y, settings.lam, p, settings.preserve_weight)
                if not per_site:
                    shared = system
            else:
                system = shared
            deltas.update(solve(site, system))
    provenance = _provenance(pipe, family, recipe, layers, fingerprint) | counts | entries
    provenance["token_rows"] = prompts.rows
    if extra:
        provenance["extra_rows"] = [{"prompt": p, "target": t} for p, t in extra]
    return WeightDelta(deltas, DeltaProvenance.parse(provenance, "the edit's provenance"))


def _modules(site: Any, matrices: str) -> list[str]:
    """The projections of ``site`` that ``edit.matrices`` edits."""
    return [(site.key, site.value)[which] for which in _MATRICES[matrices]]


def _provenance(pipe, family, recipe, layers, fingerprint) -> JsonObject:
    base = recipe.base
    fingerprint = fingerprint or model_fingerprint(pipe, family)
    return {
        "recipe_name": recipe.name,
        "recipe_sha256": recipe.sha256,
        "base_model": base.model,
        "base_revision": base.revision,
        "base_dtype": base.dtype,
        "base_variant": base.variant,
        "base_fingerprint": fingerprint,
        "base_fingerprints": fingerprints_by_dtype(pipe, family, fingerprint),
        "family": family.name,
        "denoiser": family.denoiser_attr,
        "sites": list(layers),
        "lambda": recipe.edit.lam,
        "matrices": recipe.edit.matrices,
        "tokens": recipe.edit.tokens,
        "preserve_weight": recipe.edit.preserve_weight,
        "neighbours": neighbours(recipe),
        "versions": library_versions(),
    }


@torch.no_grad()
def edit_errors(
    pipe: DiffusionPipeline, family: type[ModelFamily], recipe: Recipe, delta: WeightDelta
) -> dict[str, dict]:
    """Per edited matrix: the relative error of ``W'x`` vs ``W y`` on the edit's columns, its
    extra rows included (``edit_error``; ``error_before`` is the same for the unedited ``W``)
    and the relative drift of ``W'p`` on the preserve columns (Frobenius norms, float64)."""
    denoiser = getattr(pipe, family.denoiser_attr)
    sites = family.sites(denoiser)
    by_path = {site.key: site for site in sites} | {site.value: site for site in sites}
    prompts = edit_prompts(pipe, family, recipe, extra_rows(delta.provenance))
    if family.joint_attention or family.refines_text:
        edited = list({by_path[module].path: by_path[module] for module in delta.deltas}.values())
        edited.sort(key=lambda site: site.index)
        if family.refines_text:
            return refiner_errors(pipe, family, edited, prompts, delta)
        return joint_errors(pipe, family, recipe, edited, prompts, delta)
    states = collect_states(pipe, family, recipe, prompts)
    report = {}
    for module, d in delta.deltas.items():
        site = by_path[module]
        x, y, p = states.columns(lambda s, site=site: family.site_states(denoiser, site, s))
        weight = denoiser.get_submodule(module).weight
        report[module] = edit_report(weight, d, x, y, p)
    return report
