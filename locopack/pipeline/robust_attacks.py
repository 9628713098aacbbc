"""The attacks robust erase (``edit.robust``) runs, by name, and the model they attack.

An attack is a callable ``(target, count) -> list[Found]``: :class:`AttackTarget` is the model
of one round (the base with that round's delta applied in memory, its judges, the release's
cache and the delta's identity for cache keys), ``count`` how many prompts to return per erase
edit, best first.  :data:`ATTACKS` holds them by the names ``edit.robust.attacks`` uses;
:func:`register_attack` adds one.  ``search`` is the evidence's word search (:mod:`.attack`)
at ``evidence.attack``'s budget in evaluations (``steps``), its time limit replaced by
``edit.robust.seconds`` (no limit by default), so a round's finds do not depend on the
machine's speed; ``concept_vector``, ``soft_prompt`` and ``replay`` are the attacks of
:mod:`locopack.evidence.attacks` at ``evidence.attacks``' budgets (:func:`from_registry`;
each counts optimiser steps or text encodings, never seconds), whose finds robust erase adds
as text (the concept vector's and the soft prompt's words, the replayed prompts) and, where
they have them, as states (:class:`~locopack.state_rows.StateRows`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING

from ..evidence import attacks
from ..evidence.attacks.found import Found
from ..evidence.attacks.search import (
    attack_template,
    cached,
    concept_objective,
    ranked_search,
    ranked_words,
    success,
    vocabulary,
)
from ..evidence.before_after import generate_images
from ..localize.cache import CandidateCache
from .select_sites import check_seeds

if TYPE_CHECKING:
    from ..delta import WeightDelta
    from ..evidence.detectors import Detector
    from ..localize.scorers import Scorer
    from ..models.loaded import LoadedBase
    from ..recipe.schema import EraseEdit, Recipe


@dataclass
class AttackTarget:
    """The model one round attacks: the base with ``delta`` (a WeightDelta) applied in memory;
    ``detectors[i]`` judges erase edit i; ``identity`` names the model in cache keys."""

    base: LoadedBase
    recipe: Recipe
    scorer: Scorer | None
    detectors: list[Detector | None]
    delta: WeightDelta
    cache: CandidateCache
    identity: dict[str, object]

    def edited(self):
        """A context manager under which the pipeline carries this round's edit."""
        return self.delta.applied(self.base.denoiser)

    def draw(self, prompts: list[str], seeds: list[int]) -> dict[str, list]:
        """Every prompt with every seed at the localization's settings: {prompt: [images]}."""
        settings = self.recipe.localize
        return generate_images(
            self.base,
            prompts,
            seeds,
            settings.steps,
            settings.guidance,
            settings.resolution,
        )

    def erase_edits(self) -> list[tuple[int, EraseEdit]]:
        return [(i, e) for i, e in enumerate(self.recipe.edits) if e.kind == "erase"]

    def rate(self, index: int, prompt: str) -> float:
        """Erase edit ``index``'s concept rate on ``prompt`` over the check seeds
        (:func:`~.select_sites.check_seeds`) on this round's model, judged by its detector;
        cached under the model's identity."""
        seeds = check_seeds(self.recipe)
        key = self.cache.key(kind="robust success", prompt=prompt, seeds=seeds, **self.identity)
        if (hit := self.cache.get(key)) is None:
            with self.edited():
                images = self.draw([prompt], seeds)[prompt]
            judge = (self.detectors[index], self.scorer, self.recipe.edits[index].label, prompt)
            hit = {"scores": [success(images, prompt, *judge)], "seconds": 0.0}
            self.cache.put(key, hit)
        return float(hit["scores"][0])


#: an attack: (the model to attack, how many prompts per edit) -> what it found per erase edit
Attack = Callable[[AttackTarget, int], list[Found]]


def search_attack(target: AttackTarget, count: int) -> list[Found]:
    """The evidence's word search (:mod:`.attack`, ``evidence.attack.steps`` evaluations,
    stopped earlier only by the guard ``edit.robust.seconds``) on the edited model; per erase
    edit its ``count`` best judged prompts, best first.  (Choosing them instead by their rates
    on the check seeds, as the evidence's search confirms its find, was measured to do worse:
    rows fitted to those seeds, the README's robust erase section.)"""
    robust = target.recipe.edit.robust
    guard = robust.seconds if robust is not None and robust.seconds else math.inf
    settings = SimpleNamespace(**target.recipe.evidence.attack.model_dump() | {"seconds": guard})
    seed = check_seeds(target.recipe)[0]
    out = []
    for index, edit in target.erase_edits():
        words = vocabulary(target.base.pipe.tokenizer, edit.label)
        if not words:
            continue
        template, original = attack_template(edit), edit.originals()[0]
        detector = target.detectors[index]
        objective = concept_objective(
            target.draw, detector, target.scorer, edit.label, original, seed
        )
        judged = cached(objective, target.cache, seed=seed, **target.identity)
        ranked = ranked_words(words, template, original, target.scorer)
        with target.edited():
            record, best = ranked_search(judged, template, words, settings, ranked)
        guarded = record["stopped"] == "seconds"
        out.append(Found("search", index, tuple(best[:count]), guarded=guarded))
    return out


def from_registry(name: str) -> Attack:
    """Attack ``name`` of :mod:`locopack.evidence.attacks` as robust erase runs it: on this round's
    model, judged on the check seeds by the first erase edit's detector, at the recipe's
    budget; its ``count`` best prompts per erase edit (an attack the recipe turns off or that
    skips every edit finds nothing)."""

    def run(target: AttackTarget, count: int) -> list[Found]:
        settings = attacks.get_attack(name).settings(target.recipe)
        erase = target.erase_edits()
        if settings is None or not erase:
            return []
        draw = target.recipe.localize
        ctx = attacks.AttackContext(
            target.base.pipe, target.base.family, target.recipe, target.draw, target.edited,
            target.detectors[erase[0][0]], target.scorer, check_seeds(target.recipe),
            draw.steps, draw.guidance, draw.resolution, lambda _stem, _rows: "",
            cache=target.cache, inputs=target.identity,
        )  # fmt: skip
        found = attacks.find(ctx, name, settings)
        return [Found(f.attack, f.edit, f.prompts[:count], f.rows) for f in found if f.prompts]

    return run


ATTACKS: dict[str, Attack] = {"search": search_attack} | {
    name: from_registry(name) for name in ("concept_vector", "soft_prompt", "replay")
}


def register_attack(name: str, attack: Attack) -> None:
    """Make ``attack`` available to ``edit.robust.attacks`` as ``name``."""
    ATTACKS[name] = attack
