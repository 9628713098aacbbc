"""``locopack build``: recipe in, release out.

localize → edit → export → evidence → card → history, into one output folder.  Each stage
writes its files atomically and a rerun skips every stage whose output is already there for
the same recipe and base model (the localization sweep also resumes inside its cache), so a
crashed build continues where it stopped.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from .card import CARD_FILE
from .delta import WeightDelta
from .errors import LocopackError
from .export.lora import ADAPTER_FILE, KOHYA_FILE, MANIFEST_FILE
from .history import HISTORY_FILE


@dataclass
class BuildSummary:
    """What a build did: chosen layers, seconds per stage, evidence headline, files."""

    out: Path
    layers: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


#: what a build writes (besides ``cache/``, whose entries are keyed by recipe and model)
BUILD_OUTPUTS = (
    "localization.json",
    "localization.png",
    "delta.safetensors",
    "edit.json",
    ADAPTER_FILE,
    MANIFEST_FILE,
    KOHYA_FILE,
    "merged",
    "onnx",
    "evidence",
    "evidence.json",
    CARD_FILE,
    HISTORY_FILE,
)


def _clear_another_build(out: Path, recipe: Any, echo) -> None:
    """Remove the outputs of a build of another recipe in ``out``, so that none of them (an
    old merged checkpoint, extra evidence) is hashed, described or released with this one."""
    copy = out / "recipe.yaml"
    if not copy.is_file() or copy.read_text(encoding="utf-8") == recipe.source_text:
        return
    stale = [name for name in BUILD_OUTPUTS if (out / name).exists()]
    for name in stale:
        if (out / name).is_dir():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()
    if stale:
        echo(f"{out} held a build of another recipe: removed its {', '.join(stale)}")


def _reusable_delta(path: Path, recipe: Any, fingerprint: str) -> WeightDelta | None:
    if not path.is_file():
        return None
    try:
        delta = WeightDelta.load(path)
    except LocopackError:  # damaged or not finite: redone
        return None
    prov = delta.provenance
    same = (
        prov.get("recipe_sha256") == recipe.sha256 and prov.get("base_fingerprint") == fingerprint
    )
    return delta if same and delta.sites else None


def run_build(
    recipe: Any, out: Path, *, mode: str | None = None, echo=click.echo, group=None
) -> BuildSummary | None:
    """Build the release of ``recipe`` into ``out``; see the module docstring.

    ``group``: the processes that share the localization sweep (default: all that
    ``accelerate launch`` started); only the main one goes on to the later stages and returns
    a summary, the others return None.
    """
    from .distributed import process_group

    group = group or process_group()

    from .card import write_card
    from .edit import compute_delta
    from .evidence import collect_evidence
    from .export import write_adapter, write_kohya, write_merged
    from .fingerprint import model_fingerprint
    from .history import new_entry, prior_history, write_history
    from .localize import ClipScorer
    from .stages import _layers_or_localize, load_base, save_edit, write_recipe_copy

    summary = BuildSummary(out)
    out.mkdir(parents=True, exist_ok=True)
    if group.is_main:
        _clear_another_build(out, recipe, echo)
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        summary.seconds[name] = now - clock
        clock = now
        echo(f"[{len(summary.seconds)}/6] {name} done in {summary.seconds[name]:.1f} s")

    pipe, family = load_base(recipe)
    fingerprint = model_fingerprint(pipe, family)
    write_recipe_copy(recipe, out)
    delta = _reusable_delta(out / "delta.safetensors", recipe, fingerprint)
    if delta is None:
        summary.layers = _layers_or_localize(
            recipe, pipe, family, out, None, None, mode, group.is_main, group, fingerprint
        )
    else:
        summary.layers, summary.skipped = delta.sites, ["localize", "edit"]
    if not group.is_main:
        return None
    stage("localize")
    if delta is None:
        delta = compute_delta(pipe, family, recipe, summary.layers, fingerprint=fingerprint)
        save_edit(pipe, family, recipe, delta, out)
    stage("edit")
    settings = recipe.export
    manifest = write_adapter(delta, out, settings.max_rank, settings.energy)
    if settings.kohya and delta.denoiser == "unet" and family.name != "if":
        write_kohya(delta, out, settings.max_rank, settings.energy)
    if settings.merged:
        write_merged(pipe, family, delta, out / "merged")
    if settings.onnx:
        from .export.onnx import export_denoiser_onnx

        with delta.applied(getattr(pipe, family.denoiser_attr)):
            export_denoiser_onnx(pipe, family, out / "onnx")
    stage("export")
    scorer = ClipScorer(recipe.local_path(recipe.localize.scorer), device=pipe.device)
    summary.evidence = collect_evidence(pipe, family, recipe, out, scorer, out)
    stage("evidence")
    write_card(out)
    stage("card")
    base_path = delta.provenance.get("base_path") or recipe.base.model
    previous = prior_history(base_path, recipe.base.revision)
    entry = new_entry(
        recipe,
        delta,
        out,
        previous,
        base_path=base_path,
        adapter_tolerance=manifest["max_relative_error"],
    )
    write_history(out, [*previous, entry])
    stage("history")
    summary.files = sorted(entry["files"]) + ["history.jsonl"]
    return summary
