"""Attacks that try to bring an erased concept back, by name (a registry, like peft's tuners).

Each attack runs on every erase edit, on the base model and on the edited one, judged by the
recipe's first rate detector on the evidence's seeds, within a budget the recipe states
(``evidence.attack`` for the word search, ``evidence.attacks`` for the others:
:mod:`locopack.recipe.attacks`), deterministic under its seed and resumable through the
release's cache.  Built in:

- ``word_search`` (:mod:`.word_search`): a few words searched in place of the concept;
- ``concept_vector`` (:mod:`.concept_vector`): Ring-A-Bell's concept direction in the text
  encoder's output space, as states and searched into words;
- ``soft_prompt`` (:mod:`.soft_prompt`): UnlearnDiffAtk / P4D's embeddings optimised through
  the denoiser, as embeddings and projected to words;
- ``replay`` (:mod:`.replay`): a fixed file (or Hub dataset) of attack prompts.

:func:`run_all` runs those the recipe turns on and returns the evidence's ``attacks``
section: one row per attack (and variant) and edit, the judging protocol stated once, and the
edits each attack skipped with why.  Every attack also returns :class:`Found` finds, which
robust erase adds to its next solve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Attack, AttackRun
from .concept_vector import ConceptVector
from .context import AttackContext
from .found import Found
from .replay import Replay
from .soft_prompt import SoftPrompt
from .word_search import WordSearch

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackContext",
    "AttackRun",
    "Found",
    "find",
    "get_attack",
    "run_all",
    "worst",
]

#: attacks by name, in the order the card lists them
ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (WordSearch, ConceptVector, SoftPrompt, Replay)
}

FORMAT = "locopack.attacks/1"


def get_attack(name: str) -> type[Attack]:
    """The attack registered as ``name``.

    Raises:
        KeyError: no attack has that name.
    """
    try:
        return ATTACKS[name]
    except KeyError:
        raise KeyError(f"no attack {name!r}; known: {', '.join(ATTACKS)}") from None


def run_all(ctx: AttackContext) -> tuple[dict[str, object], dict[str, AttackRun]]:
    """Every attack the recipe turns on: ``(section, runs by name)``; the section is the
    evidence's ``attacks`` (``protocol``, ``rows``, ``skipped``, and each attack's budget)."""
    runs: dict[str, AttackRun] = {}
    budgets: dict[str, str] = {}
    for name, attack in ATTACKS.items():
        settings = attack.settings(ctx.recipe)
        if settings is None:
            continue
        runs[name] = attack.run(ctx, settings)
        budgets[name] = attack.budget(settings)
    section = {
        "format": FORMAT,
        "protocol": ctx.protocol(),
        "budgets": budgets,
        "rows": [r for run in runs.values() for r in run.rows],
        "skipped": [
            s | {"attack": n, "name": ATTACKS[n].pretty_name}
            for n, run in runs.items()
            for s in run.skipped
        ],
    }
    return section, runs


def find(ctx: AttackContext, name: str, settings: BaseModel | None = None) -> list[Found]:
    """What attack ``name`` finds on the edited model of ``ctx`` (one :class:`Found` per erase
    edit it ran on), at ``settings`` or the recipe's budget: what robust erase adds as rows.

    Raises:
        KeyError: no attack has that name.
        ValueError: the recipe turns it off and no ``settings`` are given.
    """
    attack = get_attack(name)
    chosen = settings if settings is not None else attack.settings(ctx.recipe)
    if chosen is None:
        raise ValueError(f"the recipe turns the {name} attack off; give its settings")
    return attack.run(ctx, chosen).found


def worst(section: dict[str, object] | None, edit: int) -> dict[str, object] | None:
    """The row of ``edit`` with the highest success on the edited model (the attack that
    judges ``attack_success``), or None where no attack ran on it."""
    rows = [r for r in (section or {}).get("rows", []) if r["edit"] == edit]
    rows = [r for r in rows if r.get("edited") is not None]
    return max(rows, key=lambda r: r["edited"]) if rows else None
