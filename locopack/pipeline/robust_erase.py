"""Robust erase (``edit.robust``): attack the edited model, add what the attacks found as rows
of the closed-form edit, solve again, until the attacks fail or the rounds run out.

In the spirit of RECE (Gong et al., 2024: adversarial embeddings mapped, in closed form, to the
anchor concept's), but with prompts: each round runs the recipe's ``edit.robust.attacks`` on
the model as it is, each returning :class:`~locopack.evidence.attacks.found.Found` per erase edit.
The ``prompts`` best prompts of an edit whose attack success is above its bar (the edit's
``attack_success`` requirement, 0.10 where none is stated) become extra ``(prompt, target)``
rows (:func:`~locopack.edit.editor.compute_delta`'s ``extra``): the target is the edit's
target paired with the edit prompt nearest to the found prompt (word diff), since the search
fills the concept's place of an edit prompt and the found words then map onto the target's
words there, the tokens after them onto the target's (:func:`~locopack.edit.tokens.found_pairs`).
A find's continuous rows (:class:`~locopack.state_rows.StateRows`, cross-attention families:
the soft prompt's states mapped to the target's, the concept vector added to concept-free
prompts mapped to those prompts' own states) join the solve too, as RECE adds its adversarial
embeddings; the delta file stores them, so that ``audit --reproduce`` solves them again.
The recipe's prompts, its preserve prompts and neighbours stay as they were, so the new solve
is LocoEdit with more columns: no new math.  ``rounds`` bounds the solves; one more attack
judges the last one, so the record ends with the success of a fresh attack on the final edit.

Attack success of a round: over the found prompts of an edit, the largest concept rate of one
prompt on the check seeds (:func:`~locopack.pipeline.select_sites.check_seeds`), judged by the
edit's rate detector; ``after`` is the same prompts' rate once the round's rows are solved in.
Attacks are looked up by name (:mod:`.robust_attacks`), each at a budget counted in evaluations
(the word search's ``steps``, not its ``seconds``), so a recipe solves the same rows on every
machine; ``edit.robust.seconds`` is an optional guard, and a round it cut short is recorded
(``guarded``; the record's ``deterministic`` is then false). Every image an attack or a
measurement judges is cached in the release's ``cache/`` under the delta's hash, so a killed
build replays its rounds and draws only what it had not judged.
"""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from ..errors import RecipeError
from ..evidence.attacks.found import Found
from ..evidence.detectors import load_detector
from ..localize.cache import CandidateCache
from ..state_rows import StateRows
from .robust_attacks import ATTACKS, AttackTarget
from .select_sites import check_seeds, judges

if TYPE_CHECKING:
    from ..delta import WeightDelta
    from ..localize.scorers import Scorer
    from ..models.loaded import LoadedBase
    from ..recipe.schema import EraseEdit, Recipe

#: the bar of an erase edit that states no ``attack_success`` requirement
DEFAULT_BAR = 0.10


def check_robust(recipe: Recipe) -> None:
    """Refuse an ``edit.robust`` the build could not run (before any model work).

    Raises:
        RecipeError: an unknown attack, no erase edit, no rate detector, or a search without
            steps.
    """
    robust = recipe.edit.robust
    if robust is None:
        return
    unknown = [name for name in robust.attacks if name not in ATTACKS]
    problem = None
    if unknown:
        problem = f"attacks: {unknown[0]!r} is not an attack; expected one of {sorted(ATTACKS)}"
    elif not any(e.kind == "erase" for e in recipe.edits):
        problem = "expected an erase edit to make robust (it acts on erase edits only)"
    elif not any(
        load_detector(d.name, d.options).kind == "rate" for d in recipe.evidence.detectors
    ):
        problem = "expected a rate detector in evidence.detectors to judge attack success"
    elif "search" in robust.attacks and recipe.evidence.attack.steps == 0:
        problem = "the search attack runs at evidence.attack's budget: set its steps above 0"
    if problem:
        raise RecipeError(f"{recipe.source}: edit.robust: {problem}")


def bar(edit: EraseEdit) -> float:
    """The attack success an erase edit's robust erase aims for."""
    return edit.requirements.thresholds(edit.kind).get("attack_success", DEFAULT_BAR)


def nearest_target(edit: EraseEdit, prompt: str) -> str:
    """The target of the edit prompt nearest to ``prompt`` by word diff (first on ties)."""
    words = prompt.lower().split()

    def likeness(original: str) -> float:
        return difflib.SequenceMatcher(a=words, b=original.lower().split()).ratio()

    pairs = list(zip(edit.originals(), edit.targets_expanded(), strict=True))
    return max(pairs, key=lambda pair: likeness(pair[0]))[1]


def _rates(target: AttackTarget, found: list[Found]) -> dict[int, dict[str, float]]:
    """Per erase edit, each found prompt's concept rate on the check seeds (cached)."""
    out: dict[int, dict[str, float]] = {}
    for item in found:
        rates = out.setdefault(item.edit, {})
        for prompt in item.prompts:
            rates[prompt] = target.rate(item.edit, prompt)
    return out


def robust_erase(
    base: LoadedBase,
    recipe: Recipe,
    layers: list[str],
    delta: WeightDelta,
    scorer: Scorer | None,
    cache: CandidateCache,
) -> WeightDelta:
    """Robust erase of ``delta`` (LocoEdit of ``layers`` on ``base``); see the
    module docstring.  Returns the final delta, its provenance's ``robust`` holding the rounds.
    """
    from ..edit import compute_delta

    settings = recipe.edit.robust
    judged = judges(recipe, scorer)
    inputs = {"recipe": recipe.sha256, "base": base.fingerprint, "layers": layers}

    def target(delta: WeightDelta) -> AttackTarget:
        identity = {"model": delta.sha256(), "inputs": inputs}
        detectors = [detector for _, detector in judged]
        return AttackTarget(base, recipe, scorer, detectors, delta, cache, identity)

    extra: list[tuple[str, str]] = []
    states: StateRows | None = None
    rounds: list[dict[str, object]] = []
    base.pipe.set_progress_bar_config(disable=True)
    for number in range(1, settings.rounds + 2):
        found = [
            f for name in settings.attacks for f in ATTACKS[name](target(delta), settings.prompts)
        ]
        worst = _worst(_rates(target(delta), found))
        edits = {
            i: {
                "edit": i,
                "label": recipe.edits[i].label,
                "bar": bar(recipe.edits[i]),
                "success_before": w,
            }
            for i, w in worst.items()
        }
        above = {i for i, e in edits.items() if e["success_before"] > e["bar"]}
        record = {
            "round": number,
            "found": [
                {"attack": f.attack, "edit": f.edit, "prompts": list(f.prompts)}
                | ({"state_columns": f.rows.columns} if f.rows is not None else {})
                | ({"guarded": True} if f.guarded else {})
                for f in found
            ],
            "edits": list(edits.values()),
            "rows_added": 0,
        }
        rounds.append(record)
        if not above or number > settings.rounds:
            break
        new = [
            (p, nearest_target(recipe.edits[f.edit], p))
            for f in found
            if f.edit in above
            for p in f.prompts
        ]
        new = [row for row in dict.fromkeys(new) if row not in extra]
        extra += new
        continuous = [f.rows for f in found if f.edit in above and f.rows is not None]
        for rows in continuous:
            states = rows if states is None else states + rows
        delta = compute_delta(base, recipe, layers, extra=extra, rows=states)
        for i, w in _worst(_rates(target(delta), found)).items():
            edits[i]["success_after"] = w
        record.update(
            rows_added=len(new),
            state_columns_added=sum(rows.columns for rows in continuous),
            columns=delta.provenance.columns,
        )
    final = rounds[-1]["edits"]
    delta.provenance.robust = {
        "attacks": list(settings.attacks),
        "prompts": settings.prompts,
        "rounds_allowed": settings.rounds,
        "seeds": check_seeds(recipe),
        "judges": [name for name, _ in judged],
        "rounds": rounds,
        "met": all(e["success_before"] <= e["bar"] for e in final),
        # every round's attacks ran their budgets in evaluations: the same on every machine
        "deterministic": not any(f.get("guarded") for r in rounds for f in r["found"]),
    }
    return delta


def _worst(rates: dict[int, dict[str, float]]) -> dict[int, float]:
    """Per edit, the largest rate of one found prompt (0 where nothing was found)."""
    return {i: max(r.values(), default=0.0) for i, r in sorted(rates.items())}
