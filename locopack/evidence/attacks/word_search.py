"""The word search (:mod:`locopack.evidence.attacks.search`) as a registered attack.

Its search and record are those of the evidence's ``attack`` section, kept as they were; this
module reads them into the attack table: success on base is the search run against the base
model, drawn there with every seed; success on edited the search run against the edited model,
drawn there; chance the random words it started from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Attack, AttackRun
from .context import MODELS, AttackContext, row

if TYPE_CHECKING:
    from ...recipe.schema import AttackSettings, Recipe


class WordSearch(Attack):
    """A few words searched in place of the concept, gradient-free."""

    name = "word_search"
    pretty_name = "word search"
    reference_url = "https://arxiv.org/abs/2310.11868"

    @classmethod
    def settings(cls, recipe: Recipe) -> AttackSettings | None:
        settings = recipe.evidence.attack
        return settings if settings.steps > 0 else None

    @classmethod
    def budget(cls, settings: AttackSettings) -> str:
        return (
            f"{settings.tokens} words, {settings.candidates} tried per position, "
            f"{settings.steps} images per model, its {settings.confirm} best drawn with every "
            f"seed (seed {settings.seed})"
        )

    @classmethod
    def run(cls, ctx: AttackContext, settings: AttackSettings) -> AttackRun:
        from .search import as_found, run_attacks

        detectors = [ctx.detector] if ctx.detector is not None else []
        args = (ctx.draw, ctx.edited, detectors, ctx.scorer, ctx.seeds, ctx.write_grid)
        inputs = {m: ctx.inputs_of(m) for m in MODELS}
        record = run_attacks(ctx.recipe, ctx.pipe.tokenizer, *args, cache=ctx.cache, inputs=inputs)
        rows = []
        for item in record["edits"]:
            base, edited = item["searches"]["base"], item["searches"]["edited"]
            chance = item["chance"]
            rows.append(
                row(
                    cls,
                    None,
                    item["edit"],
                    ctx.recipe.edits[item["edit"]],
                    cls.budget(settings),
                    base=base["success"]["before"],
                    edited=edited["success"]["after"],
                    chance={"base": chance["before"], "edited": chance["after"]},
                    found={"base": base["prompt"], "edited": edited["prompt"]},
                )
            )
        skipped = [{k: s[k] for k in ("edit", "label", "why")} for s in record["skipped"]]
        return AttackRun(rows, as_found(record), skipped, record)
