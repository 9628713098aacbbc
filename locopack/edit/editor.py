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
Continuous rows (``rows``, :class:`~locopack.state_rows.StateRows`: states no prompt produces,
each column mapped to a target state) join X and Y after them; the delta carries them in its
file.  Only sites that all read one encoded text (cross-attention) can take them: a
joint-attention or refiner site reads a stream the states do not determine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import singledispatch
from typing import TYPE_CHECKING

import torch

from ..delta import WeightDelta, library_versions
from ..delta_record import DeltaProvenance
from ..errors import EditError
from ..fingerprint import fingerprints_by_dtype
from ..models.base import Site
from ..models.text_sites import CrossAttention, JointAttention, TextRefiner, TextSites
from ..prompt_samples import neighbours
from ..record import JsonObject
from ..state_rows import StateRows
from .closed_form import EditSystem, edit_report
from .joint import joint_deltas, joint_errors
from .refiner import refiner_deltas, refiner_errors
from .tokens import EditPrompts, edit_prompts

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily
    from ..models.loaded import LoadedBase
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
    rows: StateRows | None = None  # continuous rows, after the prompts' columns

    def columns(
        self, transform=lambda s: s
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """X, Y (D x n) and P (D x p) in float64 after ``transform`` (a site's own states)."""
        orig, targ = transform(self.originals), transform(self.targets)
        x = [orig[k, i] for k, i, _ in self.pairs]
        y = [targ[k, j] for k, _, j in self.pairs]
        if self.rows is not None:
            found, aimed = transform(self.rows.originals), transform(self.rows.targets)
            x += [found[k, i] for k, i, _ in self.rows.pairs]
            y += [aimed[k, j] for k, _, j in self.rows.pairs]
        x, y = torch.stack(x, dim=1), torch.stack(y, dim=1)
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
    them, the token pairs of ``edit.tokens``; its continuous rows after them)."""
    prompts = prompts or edit_prompts(pipe, family, recipe)
    return EditStates(
        originals=family.encode(pipe, prompts.originals),
        targets=family.encode(pipe, prompts.targets),
        pairs=prompts.pairs,
        preserve=family.encode(pipe, prompts.preserve) if prompts.preserve else None,
        preserve_at=prompts.preserve_at,
        rows=prompts.states,
    )


def extra_rows(provenance: DeltaProvenance) -> list[tuple[str, str]]:
    """The extra ``(prompt, target)`` rows a delta was solved with (none for a plain edit)."""
    return [(row.prompt, row.target) for row in provenance.extra_rows]


@torch.no_grad()
def compute_delta(
    base: LoadedBase,
    recipe: Recipe,
    layers: list[str],
    *,
    extra: Sequence[tuple[str, str]] = (),
    rows: StateRows | None = None,
) -> WeightDelta:
    """Solve LocoEdit on ``base`` for the key and/or value matrices of ``layers`` (site module
    paths), with the ``extra`` ``(prompt, target)`` rows and the continuous ``rows`` beside
    the recipe's.

    Returns:
        A :class:`WeightDelta` with one ΔW per edited projection, the edit's provenance
        (``token_rows``: which positions of which encoder each edit prompt's columns read)
        and ``rows``.

    Raises:
        EditError: a layer is not a site of the model, the solve is not finite, or continuous
            rows meet sites that do not read one encoded text.
    """
    pipe, family, denoiser = base.pipe, base.family, base.denoiser
    sites = {site.path: site for site in base.sites}
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
    chosen = [sites[path] for path in layers]
    prompts.states = _readable(family, rows)
    deltas, entries = _site_deltas(family.text_sites, base, recipe, chosen, prompts, solve)
    counts = {key: entries.pop(key) for key in ("columns", "preserve_columns")}
    provenance = _provenance(base, recipe, layers) | counts | entries
    provenance["token_rows"] = prompts.rows
    if extra:
        provenance["extra_rows"] = [{"prompt": p, "target": t} for p, t in extra]
    provenance = DeltaProvenance.parse(provenance, "the edit's provenance")
    return WeightDelta(deltas, provenance, rows)


def _readable(family: type[ModelFamily], rows: StateRows | None) -> StateRows | None:
    """``rows``, refused where the family's sites do not all read one encoded text."""
    if rows is not None and not family.text_sites.reads_encoded_text:
        raise EditError(
            f"{family.pretty_name}: continuous rows (states) need sites that read one encoded "
            f"text; its {family.text_sites.name} sites read a stream of their own"
        )
    return rows


#: ``solve(site, system)``: the ΔW of the site's edited projections from its system
Solve = Callable[[Site, EditSystem], dict[str, torch.Tensor]]


@singledispatch
def _site_deltas(
    kind: TextSites,
    base: LoadedBase,
    recipe: Recipe,
    chosen: list[Site],
    prompts: EditPrompts,
    solve: Solve,
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """``({projection: ΔW}, provenance entries)`` of the ``chosen`` sites, the entries with
    the edit's ``columns`` and ``preserve_columns`` counts; by the family's kind of site."""
    raise EditError(f"{base.family.pretty_name}: LocoEdit cannot solve {kind.name} sites")


@_site_deltas.register
def _(kind: CrossAttention, base, recipe, chosen, prompts, solve):
    """One system shared by the sites that read the same states (one per site where the
    family normalizes the text per site)."""
    family, denoiser, settings = base.family, base.denoiser, recipe.edit
    states = collect_states(base.pipe, family, recipe, prompts)
    deltas: dict[str, torch.Tensor] = {}
    shared: EditSystem | None = None
    for site in chosen:
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
    columns = len(states.pairs) + (states.rows.columns if states.rows is not None else 0)
    return deltas, {"columns": columns, "preserve_columns": len(states.preserve_at)}


@_site_deltas.register
def _(kind: JointAttention, base, recipe, chosen, prompts, solve):
    return joint_deltas(base.pipe, base.family, recipe, chosen, prompts, solve)


@_site_deltas.register
def _(kind: TextRefiner, base, recipe, chosen, prompts, solve):
    return refiner_deltas(base.pipe, base.family, recipe, chosen, prompts, solve)


def _modules(site: Site, matrices: str) -> list[str]:
    """The projections of ``site`` that ``edit.matrices`` edits."""
    return [(site.key, site.value)[which] for which in _MATRICES[matrices]]


def _provenance(base: LoadedBase, recipe: Recipe, layers: list[str]) -> JsonObject:
    settings, fingerprint = recipe.base, base.fingerprint
    return {
        "recipe_name": recipe.name,
        "recipe_sha256": recipe.sha256,
        "base_model": settings.model,
        "base_revision": settings.revision,
        "base_dtype": settings.dtype,
        "base_variant": settings.variant,
        "base_fingerprint": fingerprint,
        "base_fingerprints": fingerprints_by_dtype(base.pipe, base.family, fingerprint),
        "family": base.family.name,
        "denoiser": base.family.denoiser_attr,
        "sites": list(layers),
        "lambda": recipe.edit.lam,
        "matrices": recipe.edit.matrices,
        "tokens": recipe.edit.tokens,
        "preserve_weight": recipe.edit.preserve_weight,
        "neighbours": neighbours(recipe),
        "versions": library_versions(),
    }


@torch.no_grad()
def edit_errors(base: LoadedBase, recipe: Recipe, delta: WeightDelta) -> dict[str, dict]:
    """Per edited matrix: the relative error of ``W'x`` vs ``W y`` on the edit's columns, its
    extra and continuous rows included (``edit_error``; ``error_before`` is the same for the
    unedited ``W``) and the relative drift of ``W'p`` on the preserve columns (Frobenius
    norms, float64)."""
    pipe, family = base.pipe, base.family
    sites = base.sites
    by_path = {site.key: site for site in sites} | {site.value: site for site in sites}
    prompts = edit_prompts(pipe, family, recipe, extra_rows(delta.provenance))
    prompts.states = _readable(family, delta.rows)
    edited = list({by_path[module].path: by_path[module] for module in delta.deltas}.values())
    edited.sort(key=lambda site: site.index)
    return _site_errors(family.text_sites, base, recipe, edited, prompts, delta)


@singledispatch
def _site_errors(
    kind: TextSites,
    base: LoadedBase,
    recipe: Recipe,
    edited: list[Site],
    prompts: EditPrompts,
    delta: WeightDelta,
) -> dict[str, dict]:
    """:func:`edit_errors` of the ``edited`` sites, by the family's kind of site."""
    raise EditError(f"{base.family.pretty_name}: no edit errors of {kind.name} sites")


@_site_errors.register
def _(kind: CrossAttention, base, recipe, edited, prompts, delta):
    family, denoiser = base.family, base.denoiser
    by_path = {site.key: site for site in edited} | {site.value: site for site in edited}
    states = collect_states(base.pipe, family, recipe, prompts)
    report = {}
    for module, d in delta.deltas.items():
        site = by_path[module]
        x, y, p = states.columns(lambda s, site=site: family.site_states(denoiser, site, s))
        report[module] = edit_report(denoiser.get_submodule(module).weight, d, x, y, p)
    return report


@_site_errors.register
def _(kind: JointAttention, base, recipe, edited, prompts, delta):
    return joint_errors(base.pipe, base.family, recipe, edited, prompts, delta)


@_site_errors.register
def _(kind: TextRefiner, base, recipe, edited, prompts, delta):
    return refiner_errors(base.pipe, base.family, edited, prompts, delta)
