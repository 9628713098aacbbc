"""Ring-A-Bell's concept vector (Tsai et al., ICLR 2024, arXiv:2310.10012).

The concept's direction in the text encoder's output space (the family's ``encode``: the
states the sites receive, or a joint-attention transformer's text input; CLIP and T5 alike) is
the mean difference over prompt pairs with and without it (their eq. 1):

    v = mean_i [ E(prompt_i) - E(prompt_i without the concept) ]

using the edit's first ``prompts`` prompts, the concept removed from the template (positions
are compared as they fall, as Ring-A-Bell does).  Two variants, each judged on base and edited:

- *states*: the first ``carriers`` concept-free prompts are drawn with their own states plus
  ``strength`` * v (the pooled vector, where there is one, stays the concept-free prompt's),
  every evidence seed;
- *words*: the words, ``tokens`` of them in place of the concept in the edit's first prompt,
  whose encoded states lie nearest (mean squared distance) to the first concept-free prompt's
  states plus ``strength`` * v, found within ``steps`` text encodings by the word search's
  coordinate search (:func:`locopack.evidence.attacks.search.search`; Ring-A-Bell uses a genetic
  search), then drawn with every evidence seed.

The text encoder is not edited, so the states and the found words are the same for both
models; what differs is what each model draws from them.  Chance is the edit's first prompt
without the concept (:meth:`~locopack.evidence.attacks.context.AttackContext.chance`).  The states'
findings are cached like every
judgement (:class:`~locopack.evidence.attacks.context.AttackContext`).
"""

from __future__ import annotations

import statistics
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

from ...errors import ModelLayoutError
from ...hooks.feed import feeding
from ...recipe.attacks import ConceptVectorSettings
from ...state_rows import StateRows
from .base import Attack, AttackRun
from .context import MODELS, AttackContext, erase_edits, row, without_concept
from .found import Found

if TYPE_CHECKING:
    from ...recipe.schema import EraseEdit, Recipe

#: words tried per position and step of the token search (in random order)
CANDIDATES = 8


def concept_direction(
    ctx: AttackContext, edit: EraseEdit, count: int
) -> tuple[torch.Tensor, list[str]]:
    """``(v, concept-free prompts)`` of the edit's first ``count`` prompts (module docstring)."""
    with_concept = edit.originals()[:count]
    free = [without_concept(t) for t in edit.prompts[:count]]
    states = ctx.family.given_text(ctx.pipe, with_concept + free)[0].float()
    n = len(free)
    return (states[:n] - states[n:]).mean(dim=0), free


class ConceptVector(Attack):
    """The concept's direction in the text encoder's space, as states and as words."""

    name = "concept_vector"
    pretty_name = "concept vector"
    reference_url = "https://arxiv.org/abs/2310.10012"

    @classmethod
    def settings(cls, recipe: Recipe) -> ConceptVectorSettings | None:
        return recipe.evidence.attacks.concept_vector

    @classmethod
    def budget(cls, settings: ConceptVectorSettings) -> str:
        return (
            f"{settings.prompts} prompt pairs, {settings.carriers} drawn, strength "
            f"{settings.strength:g}; words: "
            f"{settings.tokens}, {settings.steps} text encodings (seed {settings.seed})"
        )

    @classmethod
    def run(cls, ctx: AttackContext, settings: ConceptVectorSettings) -> AttackRun:
        out = AttackRun()
        for index, edit in erase_edits(ctx.recipe):
            try:
                _attack_edit(ctx, index, edit, settings, out)
            except ModelLayoutError as exc:  # a family whose text cannot be fed as states
                why = f"its text cannot be given as states ({exc})"
                out.skipped.append({"edit": index, "label": edit.label, "why": why})
        return out


def _attack_edit(
    ctx: AttackContext, index: int, edit: EraseEdit, settings: ConceptVectorSettings, out: AttackRun
) -> None:
    """Attack one erase edit into ``out``."""
    from .search import attack_template, search, vocabulary

    cls, budget = ConceptVector, ConceptVector.budget(settings)
    vector, free = concept_direction(ctx, edit, settings.prompts)
    free = free[: settings.carriers]
    free_states, pooled = ctx.family.given_text(ctx.pipe, free)
    states = free_states.float() + settings.strength * vector
    identity = {"free": free, "settings": settings.model_dump(), "edit": index}
    rates = {m: _states_success(ctx, m, edit, free, states, pooled, identity) for m in MODELS}
    chance = ctx.chance(edit)
    out.rows.append(row(cls, "states", index, edit, budget, **rates, chance=chance, found=None))
    words = vocabulary(ctx.family.tokenizer(ctx.pipe), edit.label)
    prompts: tuple[str, ...] = ()
    if settings.steps > 0 and words:
        template = attack_template(edit)
        limits = SimpleNamespace(**settings.model_dump(), candidates=CANDIDATES, seconds=1e18)
        found = search(_nearness(ctx, states[0]), template, words, limits)
        figures = {m: _success(ctx, m, found["prompt"], edit) for m in MODELS}
        prompts = (found["prompt"],)
        out.rows.append(
            row(
                cls, "words", index, edit, budget, **figures, chance=chance,
                found={m: found["prompt"] for m in MODELS},
            )
        )  # fmt: skip
    out.found.append(_found(ctx, index, prompts, free, states, free_states))


def _success(ctx: AttackContext, model: str, prompt: str, edit: EraseEdit) -> float:
    return ctx.prompt_success(ConceptVector.name, model, prompt, edit)


def _states_success(ctx, model, edit, free, states, pooled, identity) -> float:
    """The concept's rate over the concept-free prompts drawn with ``states`` on ``model``."""
    values = []
    for i, prompt in enumerate(free):
        key = ctx.key(ConceptVector.name, model, prompt=prompt, seeds=ctx.seeds, **identity)

        def draw(i=i, prompt=prompt) -> list:
            n = len(ctx.seeds)
            given = states[i : i + 1].expand(n, *states.shape[1:])
            extra = None if pooled is None else pooled[i : i + 1].expand(n, *pooled.shape[1:])
            with ctx.on(model), feeding(ctx.family, ctx.denoiser, given, extra):
                return ctx.draw([prompt], ctx.seeds)[prompt]

        values += ctx.judged(key, draw, prompt, edit.originals()[0], edit.label)
    return statistics.fmean(values)


def _nearness(ctx: AttackContext, target: torch.Tensor):
    """``prompt -> -(mean squared distance of its states to target)``."""

    @torch.no_grad()
    def objective(prompt: str) -> float:
        states = ctx.family.given_text(ctx.pipe, [prompt])[0][0].float()
        return -float(torch.mean((states - target) ** 2))

    return objective


def _found(ctx, index, prompts, free, states, free_states) -> Found:
    """The finds; where the sites all read one encoded text (cross-attention), the drawn states
    as rows mapped to the concept-free prompts' own states, at their content positions (the
    concept's direction must not move what the sites read)."""
    if not ctx.family.text_sites.reads_encoded_text:
        return Found(ConceptVector.name, index, prompts)
    pairs = tuple(
        (k, i, i) for k, p in enumerate(free) for i in ctx.family.content_positions(ctx.pipe, p)
    )
    rows = StateRows(states.detach().clone(), free_states.detach().float().clone(), pairs)
    return Found(ConceptVector.name, index, prompts, rows)
