"""``locopack build``: recipe in, release out.

localize → edit → export → evidence → card → history, into one output folder.  Each stage
writes its files atomically and a rerun skips every stage whose output is already there for
the same recipe and base model (the localization sweep also resumes inside its cache), so a
crashed build continues where it stopped.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..delta import WeightDelta
from ..errors import LocopackError
from .base import LoadedBase, load_base
from .layout import BUILD_OUTPUTS, DELTA_FILE, HISTORY_FILE, RECIPE_FILE
from .stages import (
    DEFAULT_OPTIONS,
    ExportChoice,
    RunOptions,
    compute_edit,
    export_delta,
    layers_or_localize,
    save_edit,
    scorer_for,
    write_recipe_copy,
)


@dataclass
class BuildSummary:
    """What a build did: chosen layers, seconds per stage, evidence headline, files."""

    out: Path
    layers: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _clear_another_build(out: Path, recipe: Any, echo: Callable[[str], Any]) -> None:
    """Remove the outputs of a build of another recipe in ``out``, so that none of them (an
    old merged checkpoint, extra evidence) is hashed, described or released with this one."""
    copy = out / RECIPE_FILE
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


def _reusable_delta(path: Path, recipe: Any, base: LoadedBase) -> WeightDelta | None:
    if not path.is_file():
        return None
    try:
        delta = WeightDelta.load(path)
    except LocopackError:  # damaged or not finite: redone
        return None
    prov = delta.provenance
    same = (
        prov.get("recipe_sha256") == recipe.sha256
        and prov.get("base_fingerprint") == base.fingerprint
    )
    return delta if same and delta.sites else None


def run_build(
    recipe: Any,
    out: Path,
    *,
    options: RunOptions = DEFAULT_OPTIONS,
    echo: Callable[[str], Any] = print,
) -> BuildSummary | None:
    """Build the release of ``recipe`` into ``out``; see the module docstring.

    The processes of ``options.group`` share the localization sweep; only the main one goes
    on to the later stages and returns a summary, the others return None.
    """
    from .card import write_card
    from .evidence import collect_evidence
    from .history import new_entry, prior_history, write_history

    group = options.processes()
    options = replace(options, progress=options.progress and group.is_main, group=group)
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

    base = load_base(recipe, allow_pickle=options.allow_pickle)
    write_recipe_copy(recipe, out)
    delta = _reusable_delta(out / DELTA_FILE, recipe, base)
    if delta is None:
        summary.layers = layers_or_localize(recipe, base, out, options=options)
    else:
        summary.layers, summary.skipped = delta.sites, ["localize", "edit"]
    if not group.is_main:
        return None
    stage("localize")
    if delta is None:
        delta = compute_edit(recipe, base, summary.layers, out)
        save_edit(recipe, base, delta, out)
    stage("edit")
    choice = ExportChoice.from_recipe(recipe.export, base.family)
    manifest = export_delta(delta, out, choice, base)["manifest"]
    stage("export")
    scorer = scorer_for(recipe, base.pipe.device)
    summary.evidence = collect_evidence(base.pipe, base.family, recipe, out, scorer, out)
    stage("evidence")
    write_card(out)
    stage("card")
    previous = prior_history(base.source, base.commit or base.revision)
    entry = new_entry(
        recipe, delta, out, previous, base=base, adapter_tolerance=manifest["max_relative_error"]
    )
    write_history(out, [*previous, entry])
    stage("history")
    summary.files = sorted(entry["files"]) + [HISTORY_FILE]
    return summary
