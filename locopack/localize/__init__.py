"""LocoGen: find the window of cross-attention sites that controls an attribute."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..distributed import ProcessGroup, barrier, process_group
from ..fingerprint import model_fingerprint
from .cache import CandidateCache
from .result import Candidate, LocalizationResult
from .scorers import ClipScorer, Scorer
from .sweep import Rung, Sweep, run_sweep
from .windows import PromptPair, candidate_windows, prompt_pairs

__all__ = [
    "Candidate",
    "CandidateCache",
    "ClipScorer",
    "LocalizationResult",
    "PromptPair",
    "Rung",
    "Scorer",
    "Sweep",
    "candidate_windows",
    "localize",
    "prompt_pairs",
    "run_sweep",
]


def localize(
    pipe: Any,
    family: Any,
    recipe: Any,
    out: str | Path | None = None,
    *,
    scorer: Scorer | None = None,
    mode: str | None = None,
    batch: int = 8,
    progress: bool = True,
    fingerprint: str | None = None,
    group: ProcessGroup | None = None,
) -> LocalizationResult:
    """Run LocoGen for ``recipe`` on a loaded pipeline.

    Args:
        pipe, family: the pipeline and its model family.
        recipe: the loaded recipe (its ``localize`` settings and edits' probes are used).
        out: folder for ``localization.json``/``.png`` and the resumable ``cache/``; None
            keeps everything in memory.
        scorer: overrides the recipe's CLIP scorer (any :class:`Scorer`).
        mode: ``fast`` or ``full``; defaults to the recipe's ``localize.mode``.
        batch: candidate windows per denoiser call.
        group: the processes to share the sweep with (default: those ``accelerate launch``
            started, or this one alone); every process returns the same result and the main
            one writes the files.
    """
    settings = recipe.localize
    group = group or process_group()
    progress = progress and group.is_main
    fingerprint = fingerprint or model_fingerprint(pipe, family)
    scorer = scorer or ClipScorer(settings.scorer, device=pipe.device)
    cache = CandidateCache(Path(out) / "cache" if out is not None else None)
    sweep = Sweep(
        pipe,
        family,
        prompt_pairs(recipe),
        scorer,
        cache=cache,
        batch=batch,
        progress=progress,
        group=group,
        cache_key={
            "model": fingerprint,
            "recipe": recipe.sha256,
            "scorer": getattr(scorer, "name", type(scorer).__name__),
        },
    )
    rung = Rung(settings.steps, settings.guidance, tuple(settings.seeds), settings.resolution)
    result = run_sweep(sweep, settings.window, rung, mode or settings.mode)
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
