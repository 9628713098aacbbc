"""Candidate windows and the prompt pairs LocoGen scores them on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import RecipeError

if TYPE_CHECKING:
    from ..recipe.schema import Recipe


def candidate_windows(site_paths: list[str], size: int) -> list[list[str]]:
    """All ``M - m + 1`` windows of ``size`` consecutive sites, in execution order."""
    if not 1 <= size <= len(site_paths):
        raise RecipeError(
            f"localize.window: expected 1..{len(site_paths)} (the model's site count), found {size}"
        )
    return [site_paths[i : i + size] for i in range(len(site_paths) - size + 1)]


@dataclass(frozen=True)
class PromptPair:
    """One LocoGen probe: generate ``original`` with ``altered``'s states at the window, and
    score the image against ``reference`` (the original prompt for erase, the target for
    update).  ``sign`` is +1 when a lower score means the window controls the attribute."""

    original: str
    altered: str
    reference: str
    sign: int


def prompt_pairs(recipe: Recipe) -> list[PromptPair]:
    """The first ``localize.prompts_per_edit`` probes of every edit of ``recipe``."""
    pairs = []
    for edit in recipe.edits:
        probes = list(zip(edit.originals(), edit.targets_expanded(), strict=True))
        which, direction = edit.success_score  # the edit moves this score in this direction
        for original, target in probes[: recipe.localize.prompts_per_edit]:
            scored = original if which == "original" else target
            pairs.append(PromptPair(original, target, scored, -direction))
    return pairs
