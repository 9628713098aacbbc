"""LocoEdit on a loaded pipeline: collect the edit's token states, solve every chosen matrix.

All edits of a recipe (erase and update, any number of concepts) are solved jointly: their
token pairs become the columns of one X and one Y, and preserve prompts (per edit and
recipe-wide) the columns of P.  Sites that read the same states share one factored system
(:class:`~locopack.edit.closed_form.EditSystem`); a family that normalizes the text per site
(DeepFloyd IF) gets one system per site.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

import torch

from ..delta import WeightDelta, library_versions
from ..errors import EditError
from ..fingerprint import fingerprints_by_dtype, model_fingerprint
from .closed_form import EditSystem
from .tokens import edit_pairs, preserve_positions

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
def collect_states(pipe: Any, family: Any, recipe: Any) -> EditStates:
    """Encode every edit's prompts and targets and pick the token pairs of ``edit.tokens``."""
    rule = recipe.edit.tokens
    originals, targets, pairs = [], [], []
    preserve = list(recipe.preserve)
    for edit in recipe.edits:
        for original, target in zip(edit.originals(), edit.targets_expanded(), strict=True):
            index = len(originals)
            originals.append(original)
            targets.append(target)
            found = edit_pairs(family, pipe, original, target, rule, edit.label)
            pairs += [(index, i, j) for i, j in found]
        preserve += list(edit.preserve)
    preserve = list(dict.fromkeys(preserve))
    preserve_at = [
        (k, pos)
        for k, prompt in enumerate(preserve)
        for pos in preserve_positions(family, pipe, prompt, rule)
    ]
    return EditStates(
        originals=family.encode(pipe, originals),
        targets=family.encode(pipe, targets),
        pairs=pairs,
        preserve=family.encode(pipe, preserve) if preserve else None,
        preserve_at=preserve_at,
    )


@torch.no_grad()
def compute_delta(
    pipe: Any, family: Any, recipe: Any, layers: list[str], *, fingerprint: str | None = None
) -> WeightDelta:
    """Solve LocoEdit for the key and/or value matrices of ``layers`` (site module paths).

    Returns:
        A :class:`WeightDelta` with one ΔW per edited projection and the edit's provenance.

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
    states = collect_states(pipe, family, recipe)
    settings = recipe.edit
    shared: EditSystem | None = None
    deltas: dict[str, torch.Tensor] = {}
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
        for which in _MATRICES[settings.matrices]:
            module = (site.key, site.value)[which]
            deltas[module] = system.delta(denoiser.get_submodule(module).weight).to(torch.float32)
    return WeightDelta(deltas, _provenance(pipe, family, recipe, layers, states, fingerprint))


def _provenance(pipe, family, recipe, layers, states, fingerprint) -> dict[str, Any]:
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
        "columns": len(states.pairs),
        "preserve_columns": len(states.preserve_at),
        "versions": library_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


@torch.no_grad()
def edit_errors(pipe: Any, family: Any, recipe: Any, delta: WeightDelta) -> dict[str, dict]:
    """Per edited matrix: the relative error of ``W'x`` vs ``W y`` on the edit's columns
    (``edit_error``; ``error_before`` is the same for the unedited ``W``) and the relative drift
    of ``W'p`` on the preserve columns (all Frobenius norms, float64)."""
    denoiser = getattr(pipe, family.denoiser_attr)
    states = collect_states(pipe, family, recipe)
    sites = family.sites(denoiser)
    by_path = {site.key: site for site in sites} | {site.value: site for site in sites}
    report = {}
    for module, d in delta.deltas.items():
        site = by_path[module]
        x, y, p = states.columns(lambda s, site=site: family.site_states(denoiser, site, s))
        w = denoiser.get_submodule(module).weight.detach().to(torch.float64)
        edited = w + d.to(torch.float64)
        scale = (w @ y).norm().clamp_min(1e-30)
        entry = {
            "edit_error": float((edited @ x - w @ y).norm() / scale),
            "error_before": float((w @ x - w @ y).norm() / scale),
        }
        if p is not None:
            entry["preserve_drift"] = float((d.to(torch.float64) @ p).norm() / (w @ p).norm())
        report[module] = entry
    return report
