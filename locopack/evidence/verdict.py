"""Whether a release meets its recipe's requirements, judged from its evidence alone.

:func:`judge` reads what the evidence already measured (no second image run) and returns the
``requirements`` section of ``evidence.json``: one item per requirement, edit and prompt set,
each with its measured value, its threshold and whether it is met.  A requirement the recipe
states but the evidence cannot judge (say, an attack that found no word to try) counts as
not met; a default one that cannot be judged (no rate detector) is listed as not judged.  The
card opens with it (:mod:`.card_verdict`), and ``audit`` recomputes the section and compares.
See :mod:`locopack.recipe.requirements` for the requirements and their defaults.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..recipe.schema import Recipe

FORMAT = "locopack.requirements/1"
#: how each requirement reads on the card, per prompt set
_NAMES = {
    ("concept_left", "edited"): "efficacy",
    ("concept_left", "held_out"): "held-out efficacy",
    ("target_shown", "edited"): "new fact shown",
    ("prompt_kept", "preserve"): "preserve prompts kept",
    ("prompt_kept", "unrelated"): "unrelated prompts kept",
    ("ssim", "preserve"): "preserve SSIM",
    ("ssim", "unrelated"): "unrelated SSIM",
    ("attack_success", "attack"): "attack success",
}
_AT_MOST = {"concept_left", "prompt_kept", "attack_success"}


def judge(recipe: Recipe, evidence: dict[str, Any]) -> dict[str, Any]:
    """The ``requirements`` section for ``evidence`` (an ``evidence.json`` mapping)."""
    items = []
    for index, edit in enumerate(recipe.edits):
        sets = evidence["edits"][index]["sets"]
        detector = judging_detector(recipe, edit, sets)
        for name, threshold in edit.requirements.thresholds(edit.kind).items():
            stated = name in edit.requirements.stated()
            for where, measured, why in _measure(name, index, sets, detector, evidence):
                items.append(_item(index, edit.label, name, where, measured, threshold, why))
                items[-1]["stated"] = stated
    unmet = [describe(i) for i in items if i["met"] is False or (i["met"] is None and i["stated"])]
    return {
        "format": FORMAT,
        "met": not unmet,
        "unmet": unmet,
        "not_judged": [describe(i) for i in items if i["met"] is None and not i["stated"]],
        "items": items,
    }


def judging_detector(recipe: Recipe, edit: Any, sets: dict[str, Any]) -> str | None:
    """The detector that judges ``edit``: the one its requirements name, else the recipe's
    first detector that reports rates (None: CLIP alone, which gives no rates)."""
    if edit.requirements.detector:
        return edit.requirements.detector
    found = next(iter(sets.values()))["detectors"]
    names = [d.name for d in recipe.evidence.detectors]
    return next((n for n in names if found.get(n, {}).get("kind") == "rate"), None)


def _measure(name: str, index: int, sets: dict, detector: str | None, evidence: dict):
    """``(prompt set, measured value or None, why not judged)`` for one requirement."""
    no_detector = "no rate detector in the evidence (name one, e.g. toy or nudenet)"
    if name == "ssim":
        for where in ("preserve", "unrelated"):
            if where in sets and sets[where]["change"]["ssim"]:
                yield where, statistics.fmean(sets[where]["change"]["ssim"]), None
        return
    if name == "attack_success":
        yield ("attack", *_attack_success(index, evidence))
        return
    wanted = {
        "concept_left": ("edited", "held_out"),
        "target_shown": ("edited",),
        "prompt_kept": ("preserve", "unrelated"),
    }[name]
    for where in wanted:
        if where not in sets:
            continue
        found = sets[where]["detectors"].get(detector) if detector else None
        if found is None:
            yield where, None, no_detector
        elif name == "concept_left":
            yield where, found["after"]["concept"], None
        elif name == "target_shown":
            yield where, found["after"].get("target"), None
        elif "prompt" in found["after"] and "prompt" in found["before"]:
            yield where, 100 * (found["before"]["prompt"] - found["after"]["prompt"]), None
        else:
            yield where, None, f"{detector} does not say what the prompt asks"


def _attack_success(index: int, evidence: dict) -> tuple[float | None, str | None]:
    """The worst attack's success on the edited model (:func:`locopack.evidence.attacks.worst`); for
    evidence written before the attack table, the word search's."""
    if "attacks" in evidence:
        from .attacks import worst

        found = worst(evidence["attacks"], index)
        if found is not None:
            return found["edited"], None
        skipped = [s for s in evidence["attacks"].get("skipped", []) if s.get("edit") == index]
        why = "; ".join(f"{s['attack']}: {s['why']}" for s in skipped)
        return None, why or "no attack was run for this edit"
    attack = evidence.get("attack") or {}
    for run in attack.get("edits", []):
        if run.get("edit") == index:
            success = run.get("searches", {}).get("edited", {}).get("success") or {}
            if "after" in success:
                return success["after"], None
            return None, run.get("why") or "the attack did not run on the edited model"
    skipped = [s for s in attack.get("skipped", []) if s.get("edit") == index]
    why = skipped[0].get("why") if skipped else None
    return None, why or "no attack was run for this edit"


def _item(index, label, name, where, measured, threshold, why) -> dict[str, Any]:
    at_most = name in _AT_MOST
    met = None if measured is None else measured <= threshold if at_most else measured >= threshold
    item = {
        "edit": index,
        "label": label,
        "requirement": name,
        "set": where,
        "measured": measured,
        "threshold": threshold,
        "rule": "at most" if at_most else "at least",
        "met": met,
    }
    if why:
        item["why"] = why
    return item


def _value(name: str, value: float) -> str:
    if name == "prompt_kept":
        return f"{value:.0f} points" if value >= 0 else f"+{-value:.0f} points"
    return f"{value:.3f}" if name == "ssim" else f"{100 * value:.0f}%"


def describe(item: dict[str, Any]) -> str:
    """One requirement in words: ``held-out efficacy (dots): 58% > 10%``."""
    name = _NAMES[item["requirement"], item["set"]]
    head = f"{name} ({item['label']})"
    if item["measured"] is None:
        return f"{head}: not judged, {item.get('why', 'no measurement')}"
    sign = {(True, "at most"): "≤", (False, "at most"): ">"}
    sign |= {(True, "at least"): "≥", (False, "at least"): "<"}
    measured, threshold = (_value(item["requirement"], item[k]) for k in ("measured", "threshold"))
    if item["requirement"] == "prompt_kept":
        measured = f"lost {measured}"
    return f"{head}: {measured} {sign[item['met'], item['rule']]} {threshold}"


def judged_count(section: dict[str, Any]) -> int:
    """How many of the section's items were measured (met or missed, not "not judged")."""
    return sum(1 for item in section["items"] if item["met"] is not None)
