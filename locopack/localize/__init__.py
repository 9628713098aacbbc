"""LocoGen: find the window of cross-attention sites that controls an attribute."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..distributed import ProcessGroup, barrier, process_group
from ..filenames import CACHE_DIR
from .cache import CandidateCache
from .plan import SweepPlan, passes, plan_sweep, time_denoiser_pass
from .result import Candidate, LocalizationResult, Round
from .run import SweepMode, run_sweep
from .scorers import ClipScorer, Scorer
from .sweep import Rung, Sweep
from .windows import PromptPair, candidate_windows, prompt_pairs

if TYPE_CHECKING:
    from ..models.loaded import LoadedBase
    from ..recipe.schema import Recipe

__all__ = [
    "Candidate",
    "CandidateCache",
    "ClipScorer",
    "LocalizationResult",
    "PromptPair",
    "Round",
    "Rung",
    "Scorer",
    "Sweep",
    "SweepMode",
    "SweepPlan",
    "candidate_windows",
    "localize",
    "passes",
    "plan_sweep",
    "prompt_pairs",
    "run_sweep",
    "time_denoiser_pass",
]


def localize(
    base: LoadedBase,
    recipe: Recipe,
    out: str | Path | None = None,
    *,
    scorer: Scorer | None = None,
    mode: SweepMode | str | None = None,
    batch: int = 8,
    full_references: bool = False,
    screen_resolution: int | None = None,
    progress: bool = True,
    group: ProcessGroup | None = None,
) -> LocalizationResult:
    """Run LocoGen for ``recipe`` on a loaded base model.

    Args:
        base: the pipeline, its family and fingerprint (the cache's key).
        recipe: the loaded recipe (its ``localize`` settings and edits' probes are used).
        out: folder for ``localization.json``/``.png`` and the resumable ``cache/``; None
            keeps everything in memory.
        scorer: overrides the recipe's CLIP scorer (any :class:`Scorer`).
        mode: a :class:`SweepMode` (or ``"fast"``/``"full"``); defaults to the recipe's
            ``localize.mode``.
        batch: candidate windows per denoiser call.
        full_references: score the baseline and all-sites lines at full settings (default:
            cheap settings; they are not part of the choice).
        screen_resolution: resolution of the race's screening rounds (a heuristic, see
            :func:`run_sweep`); None screens at the recipe's resolution.
        group: the processes to share the sweep with (default: those ``accelerate launch``
            started, or this one alone); every process returns the same result and the main
            one writes the files.
    """
    settings = recipe.localize
    group = group or process_group()
    progress = progress and group.is_main
    fingerprint, family = base.fingerprint, base.family
    scorer = scorer or ClipScorer(settings.scorer, device=base.pipe.device)
    cache = CandidateCache(Path(out) / CACHE_DIR if out is not None else None)
    sweep = Sweep(
        base.pipe,
        family,
        prompt_pairs(recipe),
        scorer,
        cache=cache,
        batch=batch,
        progress=progress,
        group=group,
        cache_key={
            "model": fingerprint,
            "scorer": getattr(scorer, "name", type(scorer).__name__),
        },
    )
    rung = Rung(settings.steps, settings.guidance, tuple(settings.seeds), settings.resolution)
    result = run_sweep(
        sweep,
        settings.window,
        rung,
        SweepMode(mode or settings.mode),
        full_references=full_references,
        screen_resolution=screen_resolution,
    )
    result.meta = {
        "recipe_name": recipe.name,
        "recipe_sha256": recipe.sha256,
        "base_model": recipe.base.model,
        "base_revision": recipe.base.revision,
        "base_fingerprint": fingerprint,
        "family": family.name,
        "scorer": getattr(scorer, "name", type(scorer).__name__),
    }
    if out is not None:
        if group.is_main:
            result.save(out)
        barrier(group)
    return result
