"""The stages of a release, run from a recipe: localize, edit, neuron-edit (exports:
:mod:`.exports`).

Each stage reads the recipe and what earlier stages wrote into the output folder, and writes
its own files there atomically (``localization.json``/``.png``, ``delta.safetensors``,
``edit.json``), next to the recipe's source text.  ``locopack build`` and the
single-stage commands call these functions and only these.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..distributed import ProcessGroup
from ..errors import RecipeError
from ..localize.run import SweepMode
from ..models.loaded import LoadedBase
from ..release.layout import (
    DELTA_FILE,
    EDIT_FILE,
    NEURON_FILE,
    RECIPE_FILE,
    base_location,
)
from ..release.records.edit import EditRecord
from ..storage import atomic_write_text
from .base import load_base

if TYPE_CHECKING:
    import torch

    from ..delta import WeightDelta
    from ..localize.scorers import ClipScorer, Scorer
    from ..recipe.schema import Recipe


@dataclass(frozen=True)
class RunOptions:
    """How stages run, as opposed to what they compute (which the recipe says).

    Attributes:
        mode: the localization sweep's mode [default: the recipe's ``localize.mode``].
        batch: candidate windows per denoiser call.
        full_references: score the baseline and all-sites lines at full settings.
        screen_resolution: the race's early rounds at this resolution (a heuristic).
        progress: show progress bars.
        group: the processes sharing the sweep [default: all that ``accelerate`` started].
        allow_pickle: also read pickled weights (only for files the user trusts).
    """

    mode: SweepMode | None = None
    batch: int = 8
    full_references: bool = False
    screen_resolution: int | None = None
    progress: bool = True
    group: ProcessGroup | None = None
    allow_pickle: bool = False

    def processes(self) -> ProcessGroup:
        """The process group: ``group``, or the one ``accelerate launch`` set up."""
        from ..distributed import process_group

        return self.group or process_group()


#: the options of a run nobody configured: the recipe's mode, progress bars, all processes
DEFAULT_OPTIONS = RunOptions()


def write_recipe_copy(recipe: Recipe, out: Path) -> None:
    """Keep the recipe's exact source text beside the outputs."""
    atomic_write_text(out / RECIPE_FILE, recipe.source_text)


def warn_about_local_paths(recipe: Recipe) -> None:
    """Warn when the recipe names a local folder by an absolute path: its exact text is part of
    the release (``recipe.yaml``, the card), so that path would be published."""
    named = {"base.model": recipe.base.model, "localize.scorer": recipe.localize.scorer}
    for field, ref in named.items():
        if os.path.isabs(os.path.expanduser(ref)):
            warnings.warn(
                f"{recipe.source}: {field} is the absolute path {ref!r}; the recipe's text is "
                "published with the release, so write it relative to the recipe's folder",
                stacklevel=2,
            )


def scorer_for(recipe: Recipe, device: str | torch.device) -> ClipScorer:
    """The recipe's CLIP scorer, named as the recipe names it (never by a local path)."""
    from ..localize import ClipScorer

    scorer = recipe.localize.scorer
    return ClipScorer(recipe.local_path(scorer), device=device, name=scorer)


def run_localize(
    recipe: Recipe,
    out: Path,
    *,
    base: LoadedBase | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
    scorer: Scorer | None = None,
):
    """LocoGen for ``recipe``; writes ``localization.json``/``.png`` (and ``cache/``) to ``out``.

    Returns:
        The :class:`~locopack.localize.LocalizationResult`.
    """
    from ..localize import localize

    base = base or load_base(recipe, allow_pickle=options.allow_pickle)
    scorer = scorer or scorer_for(recipe, base.pipe.device)
    write_recipe_copy(recipe, out)
    return localize(
        base,
        recipe,
        out,
        scorer=scorer,
        mode=options.mode,
        batch=options.batch,
        full_references=options.full_references,
        screen_resolution=options.screen_resolution,
        progress=options.progress,
        group=options.processes(),
    )


def choose_layers(
    recipe: Recipe,
    site_paths: list[str],
    layers: list[str] | None,
    localization: Path | None,
    fingerprint: str | None = None,
) -> list[str] | None:
    """The sites to edit: ``--layers``, else a localization file, else the recipe's
    ``localize.layers``; None when localization must run first.  A localization file made on
    another base (``fingerprint`` differs) is used, with a warning."""
    from ..localize import LocalizationResult
    from ..recipe import resolve_layers

    if layers:
        chosen = []
        for ref in layers:
            if ref.isdigit() and int(ref) < len(site_paths):
                chosen.append(site_paths[int(ref)])
            elif ref in site_paths:
                chosen.append(ref)
            else:
                raise RecipeError(
                    f"--layers: {ref!r} is neither a site path nor an index below "
                    f"{len(site_paths)}; run `locopack layers MODEL` to list the sites"
                )
        return list(dict.fromkeys(chosen))
    if localization is not None:
        result = LocalizationResult.load(localization)
        unknown = [p for p in result.layers if p not in site_paths]
        if unknown:
            raise RecipeError(f"{localization}: layer {unknown[0]!r} is not a site of this model")
        made_on = result.meta.get("base_fingerprint")
        if fingerprint and made_on and made_on != fingerprint:
            warnings.warn(
                f"{localization} was made on another base model ({result.meta.get('base_model')}"
                f"); its layers {result.layers} are used for this one",
                stacklevel=2,
            )
        return result.layers
    return resolve_layers(recipe, site_paths)


def layers_or_localize(
    recipe: Recipe,
    base: LoadedBase,
    out: Path,
    *,
    layers: list[str] | None = None,
    localization: Path | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
) -> list[str]:
    """The sites to edit (see :func:`choose_layers`), running LocoGen when none is given, and
    with ``localize.select: editable`` the checks that widen its window
    (:mod:`.select_sites`)."""
    for ref in layers or ():
        reason = base.family.not_a_site_reason(ref)
        if reason:
            raise RecipeError(f"--layers: {ref!r} is not a site: {reason}")
    chosen = choose_layers(recipe, base.site_paths, layers, localization, base.fingerprint)
    if chosen is None:
        scorer = scorer_for(recipe, base.pipe.device)
        result = run_localize(recipe, out, base=base, options=options, scorer=scorer)
        if recipe.localize.select == "editable":
            result = select_editable(recipe, base, out, result, scorer, options)
        chosen = result.layers
    return chosen


def select_editable(recipe, base, out, result, scorer, options=DEFAULT_OPTIONS):
    """Check LocoGen's window against the efficacy requirements and widen it until they hold;
    rewrites ``localization.json``/``.png`` with the trail and prints each part's seconds."""
    from ..distributed import barrier
    from ..localize import CandidateCache
    from ..localize.editable import trail_summary
    from ..release.layout import CACHE_DIR
    from .select_sites import select_sites

    group = options.processes()
    result = select_sites(base, recipe, result, scorer, cache=CandidateCache(out / CACHE_DIR))
    if group.is_main:
        result.save(out)
    barrier(group)
    if options.progress:
        parts = {"sweep": result.timings.get("total", 0.0)}
        parts |= {k.split(": ")[1]: v for k, v in result.timings.items() if ": " in k}
        total = sum(parts.values()) or 1.0
        shares = ", ".join(f"{k} {v:.1f} s ({100 * v / total:.0f}%)" for k, v in parts.items())
        summary = trail_summary(result.trail, result.layers, len(result.site_paths))
        print(f"localize (select: editable): {summary}; {shares}", file=sys.stderr)
    return result


def run_neurons(
    recipe: Recipe,
    out: Path,
    *,
    top_k: int,
    layers: list[str] | None = None,
    localization: Path | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
):
    """Neuron-level edit for ``recipe``; writes ``neurons.safetensors`` to ``out``."""
    from ..edit.activations import neuron_edit_for

    base = load_base(recipe, allow_pickle=options.allow_pickle)
    chosen = layers_or_localize(
        recipe, base, out, layers=layers, localization=localization, options=options
    )
    edit = neuron_edit_for(base, recipe, chosen, top_k)
    write_recipe_copy(recipe, out)
    edit.save(out / NEURON_FILE)
    return edit


def run_edit(
    recipe: Recipe,
    out: Path,
    *,
    layers: list[str] | None = None,
    localization: Path | None = None,
    options: RunOptions = DEFAULT_OPTIONS,
):
    """LocoEdit for ``recipe``; writes ``delta.safetensors`` and ``edit.json`` to ``out``.

    Without explicit layers or a localization result, LocoGen runs first (into ``out``).

    Returns:
        ``(delta, edit report)``.
    """
    from .robust_erase import check_robust

    check_robust(recipe)
    base = load_base(recipe, allow_pickle=options.allow_pickle)
    chosen = layers_or_localize(
        recipe, base, out, layers=layers, localization=localization, options=options
    )
    delta = compute_edit(recipe, base, chosen, out)
    write_recipe_copy(recipe, out)
    return delta, save_edit(recipe, base, delta, out)


def compute_edit(recipe: Recipe, base: LoadedBase, layers: list[str], out: Path):
    """LocoEdit's delta for ``layers`` (made robust when the recipe sets ``edit.robust``:
    :mod:`.robust_erase`, caching in ``out``), its provenance naming the base as a release in
    ``out`` records it (a relative path or a Hub id and commit; never a local absolute path)."""
    from ..edit import compute_delta

    delta = compute_delta(base, recipe, layers)
    if recipe.edit.robust is not None:
        from ..localize import CandidateCache
        from ..release.layout import CACHE_DIR
        from .robust_erase import robust_erase

        scorer = scorer_for(recipe, base.pipe.device)
        cache = CandidateCache(out / CACHE_DIR)
        delta = robust_erase(base, recipe, layers, delta, scorer, cache)
    delta.provenance.base_location = base_location(base, out)
    delta.provenance.base_commit = base.commit
    return delta


def save_edit(recipe: Recipe, base: LoadedBase, delta: WeightDelta, out: Path) -> EditRecord:
    """Write ``edit.json`` (layers, delta hash, per-matrix edit errors) and
    ``delta.safetensors``; returns the report."""
    from ..edit import edit_errors

    report = EditRecord(
        layers=delta.provenance.sites,
        delta_sha256=delta.sha256(),
        modules=edit_errors(base, recipe, delta),
    )
    if delta.provenance.robust is not None:  # the rounds of edit.robust
        report.robust = delta.provenance.robust
    report.write(out / EDIT_FILE)
    delta.save(out / DELTA_FILE)
    return report
