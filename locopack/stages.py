"""The stages of a release, run from a recipe: load the base, localize, edit.

Each stage reads the recipe and what earlier stages wrote into the output folder, and writes
its own files there atomically (``localization.json``/``.png``, ``delta.safetensors``,
``edit.json``), next to the recipe's source text.  The CLI calls these and only these.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from .errors import ExportError, RecipeError
from .storage import atomic_write_text


def load_base(recipe: Any):
    """Load the recipe's base pipeline (resolving a local path against the recipe's folder; a
    locopack release as base means its merged checkpoint).

    Returns:
        ``(pipe, family)``.
    """
    from .inference import pipeline_source
    from .models import load_pipeline

    base = recipe.base
    source, revision = pipeline_source(recipe.local_path(base.model), base.revision)
    return load_pipeline(source, revision, base.dtype, base.variant)


def write_recipe_copy(recipe: Any, out: Path) -> None:
    """Keep the recipe's exact source text beside the outputs."""
    atomic_write_text(out / "recipe.yaml", recipe.source_text)


def run_localize(
    recipe: Any,
    out: Path,
    *,
    pipe=None,
    family=None,
    mode=None,
    batch=8,
    scorer=None,
    progress=True,
    group=None,
    fingerprint=None,
):
    """LocoGen for ``recipe``; writes ``localization.json``/``.png`` (and ``cache/``) to ``out``.

    ``group``: processes that share the sweep (default: all that ``accelerate launch`` started).
    ``fingerprint``: the base model's, when the caller has already computed it.
    """
    from .localize import ClipScorer, localize

    if pipe is None:
        pipe, family = load_base(recipe)
    scorer = scorer or ClipScorer(recipe.local_path(recipe.localize.scorer), device=pipe.device)
    write_recipe_copy(recipe, out)
    return localize(
        pipe,
        family,
        recipe,
        out,
        scorer=scorer,
        mode=mode,
        batch=batch,
        progress=progress,
        group=group,
        fingerprint=fingerprint,
    )


def choose_layers(
    recipe: Any,
    site_paths: list[str],
    layers: list[str] | None,
    localization: Path | None,
    fingerprint: str | None = None,
) -> list[str] | None:
    """The sites to edit: ``--layers``, else a localization file, else the recipe's
    ``localize.layers``; None when localization must run first.  A localization file made on
    another base (``fingerprint`` differs) is used, with a warning."""
    from .localize import LocalizationResult
    from .recipe import resolve_layers

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


def _layers_or_localize(
    recipe, pipe, family, out, layers, localization, mode, progress, group=None, fingerprint=None
):
    site_paths = [s.path for s in family.sites(getattr(pipe, family.denoiser_attr))]
    chosen = choose_layers(recipe, site_paths, layers, localization, fingerprint)
    if chosen is None:
        chosen = run_localize(
            recipe,
            out,
            pipe=pipe,
            family=family,
            mode=mode,
            progress=progress,
            group=group,
            fingerprint=fingerprint,
        ).layers
    return chosen


def run_neurons(
    recipe: Any,
    out: Path,
    *,
    top_k: int,
    layers=None,
    localization=None,
    mode=None,
    progress=True,
):
    """Neuron-level edit for ``recipe``; writes ``neurons.safetensors`` to ``out``."""
    from .edit.activations import neuron_edit_for

    pipe, family = load_base(recipe)
    chosen = _layers_or_localize(recipe, pipe, family, out, layers, localization, mode, progress)
    edit = neuron_edit_for(pipe, family, recipe, chosen, top_k)
    write_recipe_copy(recipe, out)
    edit.save(out / "neurons.safetensors")
    return edit


def run_edit(recipe: Any, out: Path, *, layers=None, localization=None, mode=None, progress=True):
    """LocoEdit for ``recipe``; writes ``delta.safetensors`` and ``edit.json`` to ``out``.

    Without explicit layers or a localization result, LocoGen runs first (into ``out``).
    """
    from .edit import compute_delta
    from .fingerprint import model_fingerprint

    pipe, family = load_base(recipe)
    fingerprint = model_fingerprint(pipe, family)
    chosen = _layers_or_localize(
        recipe, pipe, family, out, layers, localization, mode, progress, fingerprint=fingerprint
    )
    delta = compute_delta(pipe, family, recipe, chosen, fingerprint=fingerprint)
    write_recipe_copy(recipe, out)
    return delta, save_edit(pipe, family, recipe, delta, out)


def save_edit(pipe: Any, family: Any, recipe: Any, delta: Any, out: Path) -> dict[str, Any]:
    """Write ``edit.json`` (layers, delta hash, per-matrix edit errors) and
    ``delta.safetensors``; returns the report."""
    from .edit import edit_errors

    report = {
        "layers": delta.provenance["sites"],
        "delta_sha256": delta.sha256(),
        "modules": edit_errors(pipe, family, recipe, delta),
    }
    atomic_write_text(out / "edit.json", json.dumps(report, indent=2, sort_keys=True) + "\n")
    delta.save(out / "delta.safetensors")
    return report


def run_export(
    delta_path: Path,
    out: Path,
    *,
    adapter=True,
    kohya=False,
    merged=False,
    onnx=False,
    max_rank=64,
    energy=0.99999999,
    model: str | None = None,
    progress=True,
    force: bool = False,
) -> dict[str, Any]:
    """Export a ``delta.safetensors`` into ``out``: adapter, kohya file, merged checkpoint, ONNX.

    The base model (needed for merged and ONNX) is the one recorded in the delta unless
    ``model`` names another folder or Hub id; it must be the model the delta was made for
    (its fingerprint), unless ``force``.

    Returns:
        {what: path} of everything written, plus ``manifest`` for the adapter.
    """
    from .delta import WeightDelta
    from .export import write_adapter, write_kohya, write_merged

    delta = WeightDelta.load(delta_path)
    pipe = family = None
    if merged or onnx:  # the base is loaded and checked before anything is written
        from .fingerprint import check_base_model
        from .models import load_pipeline

        prov = delta.provenance
        base = model or prov.get("base_path") or prov.get("base_model")
        if not isinstance(base, str):
            raise ExportError(f"{delta_path}: its provenance names no base model; pass --model")
        pipe, family = load_pipeline(
            base,
            None if model else prov.get("base_revision"),
            prov.get("base_dtype", "float32"),
            None if model else prov.get("base_variant"),
        )
        check_base_model(pipe, family, prov, delta_path, force)
    written: dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)
    if adapter:
        written["manifest"] = write_adapter(delta, out, max_rank, energy)
        written["adapter"] = out / "pytorch_lora_weights.safetensors"
    if kohya:
        written["kohya"] = write_kohya(delta, out, max_rank, energy)
    if merged:
        written["merged"] = write_merged(pipe, family, delta, out / "merged")
    if onnx:
        from .export.onnx import export_denoiser_onnx

        with delta.applied(getattr(pipe, family.denoiser_attr)):
            written["onnx"] = export_denoiser_onnx(pipe, family, out / "onnx")
    return written
