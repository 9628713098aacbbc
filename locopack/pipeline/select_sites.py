"""``localize.select: editable``: keep the smallest set of sites whose edit meets the efficacy
requirements, trying the sets :mod:`locopack.localize.editable` proposes.

A check solves LocoEdit at a set of sites, draws every edit's prompts and held-out paraphrases
with the delta applied in memory, and measures each efficacy requirement in force
(``concept_left``, ``target_shown``; :mod:`locopack.recipe.requirements`) per prompt set, as
the verdict will from the evidence:

- with a rate detector (the one :func:`~locopack.evidence.verdict.judging_detector` picks):
  ``concept_left`` is the share of images in which it sees the edit's label, ``target_shown``
  the share showing everything the target prompt asks;
- with CLIP alone (no rates): the edit kind's ``success_score`` (the score to the original
  prompt, down, for an erase; to the target, up, for an update) gives ``share``: how much of
  the way from the base's images to the target prompt's own images the edited images went;
  ``target_shown`` is that share and ``concept_left`` what is left of the way.  Held-out
  prompts are checked only where the edit's prompts share one target (their reference).

Images are drawn at the localization's steps and guidance with :data:`CHECK_SEEDS` seeds: the
evidence's seeds first, then the ones following, so that the evidence's images are among the
check's.  The base's and the targets' images are drawn once per selection; each check is
cached in the release's ``cache/`` like the sweep's windows.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

import torch

from ..evidence.before_after import generate_images
from ..evidence.detectors import load_detector, rates
from ..evidence.verdict import judging_detector
from ..localize.cache import CandidateCache
from ..localize.editable import TrailStep, nested_sets, smallest_meeting

if TYPE_CHECKING:
    from ..evidence.detectors import Detector
    from ..localize import LocalizationResult, Scorer
    from ..models.loaded import LoadedBase
    from ..recipe.schema import Recipe

#: images per prompt in a check
CHECK_SEEDS = 4
EFFICACY = ("concept_left", "target_shown")
CLIP_SHARE = "clip share"


def check_seeds(recipe: Recipe) -> list[int]:
    """The evidence's seeds, then the following ones, :data:`CHECK_SEEDS` in all."""
    seeds = list(recipe.evidence.seeds or recipe.localize.seeds[:1])
    following = max(seeds) + 1
    while len(seeds) < CHECK_SEEDS:
        seeds.append(following)
        following += 1
    return seeds


def judges(recipe: Recipe, scorer: Scorer | None) -> list[tuple[str, Detector | None]]:
    """Per edit, ``(name, detector)``: the rate detector that judges it, or
    ``(CLIP_SHARE, None)`` where the recipe has none."""
    loaded = {d.name: load_detector(d.name, d.options, scorer) for d in recipe.evidence.detectors}
    kinds = {"edited": {"detectors": {n: {"kind": d.kind} for n, d in loaded.items()}}}
    out = []
    for edit in recipe.edits:
        name = judging_detector(recipe, edit, kinds)
        if name is None:
            out.append((CLIP_SHARE, None))
        else:
            out.append((name, loaded.get(name) or load_detector(name, scorer=scorer)))
    return out


class EfficacyCheck:
    """Checks sets of sites; :attr:`seconds` splits its time into LocoEdit, images and
    measuring."""

    def __init__(
        self,
        base: LoadedBase,
        recipe: Recipe,
        scorer: Scorer,
        *,
        cache: CandidateCache | None = None,
    ):
        self.base, self.recipe, self.scorer = base, recipe, scorer
        self.cache = cache or CandidateCache(None)
        self.judges = judges(recipe, scorer)
        settings = recipe.localize
        self.settings = {
            "seeds": check_seeds(recipe),
            "steps": settings.steps,
            "guidance": settings.guidance,
            "resolution": settings.resolution,
            "judges": [name for name, _ in self.judges],
        }
        self.seconds = {"LocoEdit": 0.0, "images": 0.0, "measuring": 0.0}
        self._base: dict[str, list] = {}

    def __call__(self, sites: list[str], added: int | None) -> TrailStep:
        key = self.cache.key(
            kind="editable check",
            model=self.base.fingerprint,
            recipe=self.recipe.sha256,
            scorer=getattr(self.scorer, "name", type(self.scorer).__name__),
            settings=self.settings,
            sites=sites,
        )
        found = self.cache.get(key)
        if found is not None and isinstance(found.get("checks"), list):
            checks = found["checks"]
        else:
            started = time.perf_counter()
            checks = self._measure(sites)
            values = [c["measured"] for c in checks] or [0.0]
            seconds = time.perf_counter() - started
            self.cache.put(key, {"scores": values, "seconds": seconds, "checks": checks})
        return TrailStep(sites, added, checks, all(c["met"] for c in checks))

    def _measure(self, sites: list[str]) -> list[dict[str, object]]:
        from ..edit import compute_delta

        wanted = [self._prompts(index) for index in range(len(self.recipe.edits))]
        every = sorted({p for sets in wanted for prompts, _ in sets.values() for p in prompts})
        clock = time.perf_counter()
        delta = compute_delta(self.base, self.recipe, sites)
        self.seconds["LocoEdit"] += time.perf_counter() - clock
        with delta.applied(self.base.denoiser):
            after = self._draw(every)
        checks = []
        clock = time.perf_counter()
        for index, sets in enumerate(wanted):
            for where, (prompts, targets) in sets.items():
                checks += self._judge(index, where, prompts, targets, after)
        self.seconds["measuring"] += time.perf_counter() - clock
        return checks

    def _prompts(self, index: int) -> dict[str, tuple[list[str], list[str]]]:
        """An edit's checked sets: ``{set: (prompts, their targets)}``."""
        edit = self.recipe.edits[index]
        targets = edit.targets_expanded()
        sets = {"edited": (edit.originals(), targets)}
        shared = targets[0] if len(set(targets)) == 1 else None
        held = edit.expanded_held_out()
        if held and (shared or self.judges[index][1] is not None):
            sets["held_out"] = (held, [shared or p for p in held])
        return sets

    def _judge(self, index, where, prompts, targets, after) -> list[dict[str, object]]:
        edit = self.recipe.edits[index]
        thresholds = edit.requirements.thresholds(edit.kind)
        name, detector = self.judges[index]
        measured = {}
        if detector is not None:
            shots = [image for p in prompts for image in after[p]]
            per_image = [p for p in prompts for _ in after[p]]
            measured["concept_left"] = rates(detector(shots, per_image), edit.label)["concept"]
            if where == "edited" and "target_shown" in thresholds:
                per_target = [t for t in targets for _ in after[prompts[0]]]
                shown = rates(detector(shots, per_target), edit.label).get("prompt")
                if shown is not None:
                    measured["target_shown"] = shown
        else:
            share = self._clip_share(edit, prompts, targets, after)
            measured["concept_left"] = 1.0 - share
            if where == "edited":
                measured["target_shown"] = share
        out = []
        for requirement in EFFICACY:
            if requirement in thresholds and requirement in measured:
                at_most = requirement == "concept_left"
                value, threshold = measured[requirement], thresholds[requirement]
                out.append(
                    {
                        "edit": index,
                        "set": where,
                        "requirement": requirement,
                        "judge": name,
                        "measured": value,
                        "threshold": threshold,
                        "rule": "at most" if at_most else "at least",
                        "met": value <= threshold if at_most else value >= threshold,
                    }
                )
        return out

    def _clip_share(self, edit, prompts, targets, after) -> float:
        """How much of the way from the base's images of ``prompts`` to the base's images of
        their ``targets`` the edited images went, by the edit's ``success_score``."""
        which, _ = edit.success_score
        texts = prompts if which == "original" else targets
        base = self._base_images(list(dict.fromkeys(prompts + targets)))

        def score(drawn: dict, keys: list[str]) -> float:
            shots = [image for k in keys for image in drawn[k]]
            scored = [t for t, k in zip(texts, keys, strict=True) for _ in drawn[k]]
            return statistics.fmean(self.scorer(shots, scored))

        before, reference = score(base, prompts), score(base, targets)
        moved = score(after, prompts) - before
        return moved / (reference - before) if abs(reference - before) > 1e-9 else 1.0

    def _base_images(self, prompts: list[str]) -> dict[str, list]:
        missing = [p for p in prompts if p not in self._base]
        if missing:
            self._base.update(self._draw(missing))
        return self._base

    @torch.no_grad()
    def _draw(self, prompts: list[str]) -> dict[str, list]:
        """Every prompt with every check seed: {prompt: [PIL image per seed]}."""
        clock, settings = time.perf_counter(), self.settings
        images = generate_images(
            self.base,
            prompts,
            settings["seeds"],
            settings["steps"],
            settings["guidance"],
            settings["resolution"],
        )
        self.seconds["images"] += time.perf_counter() - clock
        return images


def select_sites(
    base: LoadedBase,
    recipe: Recipe,
    result: LocalizationResult,
    scorer: Scorer,
    *,
    cache: CandidateCache | None = None,
) -> LocalizationResult:
    """Try the nested sets of sites grown from ``result``'s ranking, smallest first, and keep
    the smallest whose edit meets every efficacy requirement (every site when none does).

    Returns:
        ``result`` with ``select``, ``trail``, ``check`` and ``selected`` set; the seconds of
        the checks by part are added to its ``timings`` (``editable: …``).
    """
    check = EfficacyCheck(base, recipe, scorer, cache=cache)
    sets = nested_sets(result)
    tried: dict[int, TrailStep] = {}

    def meets(index: int) -> bool:
        if index not in tried:
            indices, added = sets[index]
            tried[index] = check([result.site_paths[i] for i in indices], added)
        return tried[index].met

    pipe = base.pipe
    progress = getattr(pipe, "_progress_bar_config", None)
    pipe.set_progress_bar_config(disable=True)
    try:
        kept = smallest_meeting(len(sets), meets)
    finally:
        if progress is not None:
            pipe.set_progress_bar_config(**progress)
    trail = [tried[i] for i in sorted(tried)]
    selected = list(result.site_paths)
    if kept is not None:
        selected = _pruned(result, sets[: kept + 1], check, trail)
    result.select = "editable"
    result.trail = trail
    result.check = dict(check.settings)
    result.selected = selected
    result.timings.update({f"editable: {k}": v for k, v in check.seconds.items()})
    return result


def _pruned(
    result: LocalizationResult, sets: list, check: EfficacyCheck, trail: list[TrailStep]
) -> list[str]:
    """Leave out of the last set, one group at a time, the sites that each earlier step
    added (LocoGen's window first), where the edit still meets the requirements without
    them: redundant sites that a window ranked high brought in.  Appends to ``trail``."""
    kept = set(sets[-1][0])
    groups, held = [], set()
    for indices, added in sets[:-1]:
        groups.append((sorted(set(indices) - held), added))
        held |= set(indices)
    for group, added in groups:
        smaller = sorted(kept - set(group))
        if smaller and len(smaller) < len(kept):
            step = check([result.site_paths[i] for i in smaller], added)
            step.removed = [result.site_paths[i] for i in group]
            trail.append(step)
            if step.met:
                kept = set(smaller)
    return [result.site_paths[i] for i in sorted(kept)]


def trail_matches(
    recorded: LocalizationResult, again: LocalizationResult, tolerance: float
) -> tuple[bool, float]:
    """Whether ``again``'s trail tries the same sets, with the same outcomes, as
    ``recorded``'s, every measurement within ``tolerance``; and the largest difference."""
    old = [asdict(s) for s in recorded.trail or []]
    new = [asdict(s) for s in again.trail or []]
    worst = 0.0
    same = len(old) == len(new) and recorded.layers == again.layers
    for a, b in zip(old, new, strict=False):
        same = same and (a["sites"], a["met"]) == (b["sites"], b["met"])
        same = same and len(a["checks"]) == len(b["checks"])
        for x, y in zip(a["checks"], b["checks"], strict=False):
            worst = max(worst, abs(x["measured"] - y["measured"]))
    return same and worst <= tolerance, worst
