"""The card's opening: whether the release meets its recipe's requirements.

The verdict line comes first (:func:`verdict_line`, from the ``requirements`` section of
``evidence.json``), then one table row per requirement, and, when
the release was built with ``--allow-unmet``, a sentence saying it was published anyway
(the sentences are in the card's template; :func:`requirements_section` computes the rest).
``audit`` reads the line back (:func:`card_verdict`) and fails when it disagrees.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LocopackError
from ..evidence.verdict import describe, judged_count
from ..record import JsonObject
from . import markdown_text as md
from .layout import CARD_FILE, EVIDENCE_FILE, release_recipe
from .records.evidence import EvidenceRecord

if TYPE_CHECKING:
    from ..recipe.schema import Recipe

HEADING = "## Requirements"


def requirements_section(evidence: dict, allowed_unmet: bool) -> dict[str, object] | None:
    """The values of the card's requirements section (None for a release made before
    requirements): the verdict line, one row per judged or stated requirement, and the
    requirements not judged, grouped by why."""
    section = evidence.get("requirements")
    if not section:
        return None
    rows = [
        {"requirement": md.inline(describe(item)), "state": _state(item)}
        for item in section["items"]
        if item["met"] is not None or item.get("stated")
    ]
    unjudged: dict[str, list[str]] = {}
    for item in section["items"]:
        if item["met"] is None and not item.get("stated"):
            name = describe(item).partition(":")[0]
            unjudged.setdefault(item.get("why", "no measurement"), []).append(name)
    return {
        "heading": HEADING,
        "verdict": verdict_line(section),
        "allowed_unmet": allowed_unmet and not section["met"],
        "rows": rows,
        "unjudged": [
            {"names": ", ".join(md.inline(name) for name in names), "why": md.inline(why)}
            for why, names in unjudged.items()
        ],
    }


def verdict_line(section: JsonObject) -> str:
    """The card's first line about the requirements (recipe text in it escaped)."""
    if section["met"]:
        judged = judged_count(section)
        unjudged = f", {len(section['not_judged'])} not judged" if section["not_judged"] else ""
        return f"**Meets its requirements** ({judged} checks{unjudged}; table below)."
    unmet = "; ".join(md.inline(text) for text in section["unmet"])
    return f"**Does not meet its requirements**: {unmet}."


def _state(item: JsonObject) -> str:
    return {True: "met", False: "**missed**", None: "**not judged**"}[item["met"]]


def card_verdict(card_text: str) -> str | None:
    """The verdict line a card states, or None when it has no requirements section."""
    lines = card_text.splitlines()
    if HEADING not in lines:
        return None
    after = lines[lines.index(HEADING) + 1 :]
    return next((line for line in after if line.strip()), None)


def check_verdict(folder: Path, recipe: Recipe | None = None) -> tuple[bool, str]:
    """Whether the verdict the release states agrees with its evidence: ``evidence.json``'s
    section is what :func:`~locopack.evidence.verdict.judge` makes of that evidence and the
    recipe, and the card's line is :func:`verdict_line` of it.  Returns ``(ok, detail)``.
    ``recipe``: the release's recipe where the caller has read it already."""
    from ..evidence.verdict import judge

    if not (folder / EVIDENCE_FILE).is_file():
        return True, f"no {EVIDENCE_FILE}: nothing to judge"
    try:
        evidence = EvidenceRecord.read(folder / EVIDENCE_FILE)
        card = (folder / CARD_FILE).read_text(encoding="utf-8")
        recipe = release_recipe(folder, recipe)
    except (OSError, ValueError, LocopackError) as err:
        return False, f"cannot read the evidence, card or recipe ({err})"
    stated = evidence.requirements
    if stated is None:
        return True, "not recorded (a release made before requirements)"
    try:
        judged = judge(recipe, evidence.to_json())
    except (KeyError, TypeError, IndexError, ValueError) as err:
        return False, f"{EVIDENCE_FILE} does not hold what locopack writes ({err})"
    if {k: stated.get(k) for k in judged} != judged:
        return False, f"{EVIDENCE_FILE}'s verdict is not what its evidence and recipe give"
    expected, found = verdict_line(judged), card_verdict(card)
    if found != expected:
        return False, f"{CARD_FILE} states {found!r}, the evidence gives {expected!r}"
    if judged["met"]:
        return True, f"met ({judged_count(judged)} checks)"
    return True, "NOT met (the card says so): " + "; ".join(judged["unmet"])
