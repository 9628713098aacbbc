"""The card's opening: whether the release meets its recipe's requirements.

The verdict line comes first (:func:`verdict_line`, from the ``requirements`` section of
``evidence.json``), then one table row per requirement, and, when
the release was built with ``--allow-unmet``, a sentence saying it was published anyway.
``audit`` reads the line back (:func:`card_verdict`) and fails when it disagrees.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LocopackError
from ..evidence.verdict import describe, judged_count
from ..record import JsonObject
from . import markdown_text as md
from .layout import CARD_FILE, EVIDENCE_FILE, RECIPE_FILE
from .records.evidence import EvidenceRecord

HEADING = "## Requirements"
ALLOWED_UNMET = (
    "This release was built with `--allow-unmet`: its publisher chose to release it although it "
    "misses the requirements above."
)


def requirements_section(evidence: EvidenceRecord, allowed_unmet: bool) -> str:
    """The card's requirements section ("" for a release made before requirements)."""
    section = evidence.requirements
    if not section:
        return ""
    rows = [
        f"| {md.inline(describe(item))} | {_state(item)} |"
        for item in section["items"]
        if item["met"] is not None or item.get("stated")
    ]
    lines = [HEADING, "", verdict_line(section), ""]
    if allowed_unmet and not section["met"]:
        lines += [ALLOWED_UNMET, ""]
    if rows:
        lines += ["| requirement (edit): measured vs threshold | |", "|---|---|", *rows, ""]
    unjudged: dict[str, list[str]] = {}
    for item in section["items"]:
        if item["met"] is None and not item.get("stated"):
            name = describe(item).partition(":")[0]
            unjudged.setdefault(item.get("why", "no measurement"), []).append(name)
    for why, names in unjudged.items():
        listed = ", ".join(md.inline(name) for name in names)
        lines += [
            f"*Not judged* (defaults the evidence cannot measure): {listed}: {md.inline(why)}.",
            "",
        ]
    return "\n".join(lines)


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


def check_verdict(folder: Path) -> tuple[bool, str]:
    """Whether the verdict the release states agrees with its evidence: ``evidence.json``'s
    section is what :func:`~locopack.evidence.verdict.judge` makes of that evidence and the
    recipe, and the card's line is :func:`verdict_line` of it.  Returns ``(ok, detail)``."""
    from ..evidence.verdict import judge
    from ..recipe.schema import load_recipe

    if not (folder / EVIDENCE_FILE).is_file():
        return True, f"no {EVIDENCE_FILE}: nothing to judge"
    try:
        evidence = EvidenceRecord.read(folder / EVIDENCE_FILE)
        card = (folder / CARD_FILE).read_text(encoding="utf-8")
        recipe = load_recipe(folder / RECIPE_FILE)
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
