"""The soft prompt's projection to words: the *words* variant of :mod:`.soft_prompt`.

The nearest word to each optimised vector (cosine, in the embedding table of the encoder whose
tokens index the sites) can lose the concept: the vectors lie between words, and on the deep
toy world the nearest ones included the edit's own target word ("plain"), which draws no dots
(0% on the base model, where the soft prompt itself drew dots on every image).  As P4D and
UnlearnDiffAtk keep their prompts discrete, each position here keeps its ``candidates`` nearest
words, and a coordinate search among them (starting from the nearest words, each position in
turn) keeps a replacement that lowers the objective the soft prompt was optimised on (P4D's
noise matching, :func:`~.soft_optimise.trajectory_loss`), evaluated without gradient on
:data:`CALLS` evenly spaced calls of the recorded trajectory.  Cost: at most ``tokens`` x
(``candidates`` - 1) + 1 text encodings, each with :data:`CALLS` denoiser passes; no image.
``candidates: 1`` is the nearest word alone.  Deterministic: no random choice is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .feed import single_token, text_encoders
from .soft_optimise import trajectory_loss

if TYPE_CHECKING:
    from .context import AttackContext

#: trajectory calls the projection's objective is evaluated on (more than an optimiser step's
#: ``timesteps``: one choice per position is made from these values, not many small steps)
CALLS = 4


def shortlist(
    ctx: AttackContext, vectors: dict[str, torch.Tensor], words: list[str], count: int
) -> list[list[int]]:
    """Per soft token, the indices into ``words`` of its ``count`` nearest words (cosine in the
    primary encoder's embedding table), nearest first."""
    primary = ctx.family.tokenizer(ctx.pipe)
    name, tokenizer, encoder = next(e for e in text_encoders(ctx.pipe) if e[1] is primary)
    ids = torch.tensor([single_token(tokenizer, w) for w in words])
    table = torch.nn.functional.normalize(encoder.get_input_embeddings().weight[ids].float(), dim=1)
    likeness = torch.nn.functional.normalize(vectors[name].float(), dim=1) @ table.T
    return likeness.topk(min(count, len(words)), dim=1).indices.tolist()


def evenly_spaced(trajectory: list[tuple], count: int) -> list[tuple]:
    """``count`` (at least 2) calls spread over ``trajectory``, its first and last included."""
    if count >= len(trajectory):
        return list(trajectory)
    last = len(trajectory) - 1
    return [trajectory[round(i * last / (count - 1))] for i in range(count)]


@torch.no_grad()
def project(
    ctx: AttackContext,
    vectors: dict[str, torch.Tensor],
    words: list[str],
    template: str,
    trajectory: list[tuple],
    candidates: int,
) -> list[str]:
    """The words that replace the soft tokens in ``template`` (its ``{words}``), chosen on the
    model as it is (see the module docstring)."""
    options = shortlist(ctx, vectors, words, candidates)
    calls = evenly_spaced(trajectory, CALLS)

    def loss(choice: list[int]) -> float:
        prompt = template.format(words=" ".join(words[i] for i in choice))
        states, pooled = ctx.family.given_text(ctx.pipe, [prompt])
        return float(trajectory_loss(ctx, states, pooled, calls))

    chosen = [row[0] for row in options]
    best = loss(chosen) if candidates > 1 else 0.0
    for position, row in enumerate(options):
        for index in row[1:]:
            trial = chosen[:position] + [index] + chosen[position + 1 :]
            value = loss(trial)
            if value < best:
                best, chosen = value, trial
    return [words[i] for i in chosen]
