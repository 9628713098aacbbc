"""Re-run a release's recipe on its base and compare: the audit's ``--reproduce`` check.

Two depths, and the report always says which one ran:

- ``full`` (the default): LocoGen runs again, with the recipe's settings and the mode the
  release recorded, on the recorded base and scorer; every window score must match the
  release's ``localization.json`` within :data:`SCORE_TOLERANCE` and the same window must be
  chosen; a release made with ``localize.select: editable`` repeats its whole trail of checks
  (the same sets tried, the same outcomes, each measurement within the tolerance).  Then
  LocoEdit runs at that window and the delta must match.  This verifies the layer
  choice as well as the edit.  A recipe that names its layers explicitly has no sweep to
  repeat, and the report says so.
- ``quick``: only LocoEdit runs again, at the window the release recorded.

The delta is compared bit for bit on CPU with the recorded library versions, within a relative
1e-5 otherwise.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING

from ..release.layout import HISTORY_FILE, LOCALIZATION_FILE, locate

if TYPE_CHECKING:
    from ..delta import WeightDelta
    from ..models.loaded import LoadedBase
    from ..recipe.schema import Recipe
    from ..release.records.history import HistoryEntry

#: largest difference allowed between a recorded and a recomputed window score
SCORE_TOLERANCE = 1e-4


class Reproduce(str, enum.Enum):
    """How much of the recipe ``audit --reproduce`` runs again."""

    FULL = "full"
    QUICK = "quick"


def reproduce(
    entry: HistoryEntry,
    delta: WeightDelta,
    folder: Path,
    base_source: str,
    scorer_source: str | None,
    how: Reproduce,
    *,
    allow_pickle: bool = False,
) -> list[tuple[str, bool, str]]:
    """The checks of re-running ``entry``'s recipe: ``(name, ok, detail)`` each.

    ``base_source``: where the base model is here; ``scorer_source``: the CLIP scorer, when
    not where the history records it or the recipe names it.
    """
    from ..hub.apply import pipeline_source
    from ..models import load_base_model
    from ..recipe.schema import parse_recipe

    recipe = parse_recipe(entry.recipe_text, f"{HISTORY_FILE}:{entry.index + 1}")
    source, _ = pipeline_source(base_source)
    revision = entry.base_commit or entry.base_revision
    if Path(source).is_dir():
        revision = None
    base = load_base_model(
        source,
        revision,
        recipe.base.dtype,
        recipe.base.variant,
        allow_pickle=allow_pickle,
        t5_length=recipe.base.max_sequence_length,
    )
    checks = []
    layers = delta.sites
    if how is Reproduce.FULL:
        scorer_source = scorer_source or locate(
            folder, entry.scorer_location, recipe.localize.scorer
        )
        check, layers = _relocalize(recipe, base, folder, scorer_source)
        checks.append(check)
        if layers is None:
            return checks
    checks.append(_redo_edit(recipe, base, layers, delta, entry, how))
    return checks


def _relocalize(recipe: Recipe, base: LoadedBase, folder: Path, scorer_source: str | None):
    """Run LocoGen again and compare it with the release's ``localization.json``."""
    from ..localize import ClipScorer, LocalizationResult, localize

    recorded_path = folder / LOCALIZATION_FILE
    if not recorded_path.is_file():
        if recipe.localize.layers:
            detail = "the recipe names its layers; no localization to repeat"
            return ("reproduce localization", True, detail), None
        return ("reproduce localization", False, f"{LOCALIZATION_FILE}: missing"), None
    if scorer_source is None:
        detail = (
            f"the CLIP scorer {recipe.localize.scorer!r} is not reachable here; pass --scorer "
            "DIR to re-run the localization, or --reproduce quick to reuse the recorded window"
        )
        return ("reproduce localization", False, detail), None
    recorded = LocalizationResult.load(recorded_path)
    scorer = ClipScorer(scorer_source, device=base.pipe.device, name=recipe.localize.scorer)
    again = localize(base, recipe, None, scorer=scorer, mode=recorded.mode, progress=False)
    worst = max(
        (
            abs(a - b)
            for old, new in zip(recorded.candidates, again.candidates, strict=True)
            for a, b in zip(old.scores, new.scores, strict=True)
        ),
        default=0.0,
    )
    trail = ""
    if recorded.select == "editable":  # the whole trail of checks, from the same window
        from .select_sites import select_sites, trail_matches

        again = select_sites(base, recipe, again, scorer)
        same_trail, off = trail_matches(recorded, again, SCORE_TOLERANCE)
        worst = max(worst, off)
        matches = "matches" if same_trail else "differs"
        trail = f"; the editable trail ({len(again.trail)} sets) {matches}"
    else:
        same_trail = True
    same_window = again.layers == recorded.layers
    ok = same_window and same_trail and worst <= SCORE_TOLERANCE
    detail = (
        f"LocoGen ({recorded.mode} mode) chose {'the same' if same_window else 'another'} window "
        f"({', '.join(again.layers)}){trail}; largest score difference {worst:.1e} "
        f"(tolerance {SCORE_TOLERANCE:.0e})"
    )
    return ("reproduce localization", ok, detail), again.layers


def _redo_edit(recipe, base, layers, delta, entry, how: Reproduce) -> tuple[str, bool, str]:
    from ..delta import library_versions
    from ..edit import compute_delta, extra_rows

    # a robust erase's rows (text and states) are the recorded ones: no attack is repeated
    again = compute_delta(base, recipe, layers, extra=extra_rows(delta.provenance), rows=delta.rows)
    exact = library_versions() == entry.versions and base.pipe.device.type == "cpu"
    if exact:
        same = again.sha256() == delta.sha256()
        tolerance = "bit-exact (same versions, CPU)"
    else:
        same = again.deltas.keys() == delta.deltas.keys() and all(
            float((again.deltas[p] - d).norm() / d.norm().clamp_min(1e-30)) <= 1e-5
            for p, d in delta.deltas.items()
        )
        tolerance = "within 1e-5 (other versions or device)"
    where = (
        "at the recorded window (quick: the layer choice was not re-checked)"
        if how is Reproduce.QUICK
        else "at the re-localized window"
    )
    outcome = "the same" if same else "a different"
    return ("reproduce", same, f"LocoEdit {where} gives {outcome} delta, checked {tolerance}")
