"""A soft prompt optimised through the denoiser (UnlearnDiffAtk, arXiv:2310.11868; P4D,
arXiv:2309.06135).

``tokens`` continuous input embeddings take the concept's place in the edit's first prompt
(a placeholder word, :func:`~locopack.evidence.attacks.feed.placeholder`, marks them; each text
encoder of the pipeline, CLIP and T5, gets vectors of its own width, starting from the embeddings of
``tokens`` random words).  They are optimised with Adam so that the attacked model's noise
prediction on them matches the base model's on the concept prompt (P4D's objective):

    min_e  sum_t || eps_model(x_t, t, E(prompt with e)) - eps_base(x_t, t, E(concept prompt)) ||^2

over ``timesteps`` points per step, drawn (under ``seed``) from the base model's own denoising
run of the concept prompt (unguided, ``seed``'s latent), at the evidence's steps.  The step
size is ``lr`` times the spread (standard deviation) of each encoder's token embeddings.  The
pooled vector (SD3, FLUX) is recomputed from the soft prompt at every step; SD-XL's keeps the
concept prompt's during the optimisation (a deviation: its pooled path is not a site).

Two variants, each judged on base and edited, where the attack ran against that model:

- *embeddings*: the soft prompt itself, drawn through the pipeline's own encoding (white-box
  upper bound: no user can type it);
- *words*: the soft prompt projected to whole words (:mod:`.soft_project`: each vector's
  ``candidates`` nearest words, and a short coordinate search among them on the same
  objective) and that prompt drawn.

Chance is the edit's first prompt without the concept.  Its finds (:class:`Found`) are the
edited model's projected prompt and, for cross-attention families, the soft prompt's encoded
states as rows mapped to the edit's first target's states.  The optimised
embeddings and the projected words are cached, so an interrupted build neither optimises,
projects nor draws again what it finished.  An erase edit is
skipped, with why, where no placeholder word exists or the pipeline encodes prompts without
gradient (DeepFloyd IF).
"""

from __future__ import annotations

import random
import statistics
from typing import TYPE_CHECKING

import torch

from ...edit.tokens import found_pairs
from ...errors import ModelLayoutError
from ...recipe.attacks import SoftPromptSettings
from ...state_rows import StateRows
from .base import Attack, AttackRun
from .context import MODELS, AttackContext, erase_edits, row
from .feed import single_token, soft_tokens, text_encoders
from .found import Found
from .soft_optimise import carries_gradient, optimise, record_trajectory
from .soft_project import project

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ...recipe.schema import EraseEdit, Recipe


class SoftPrompt(Attack):
    """Continuous token embeddings optimised through the denoiser, then projected to words."""

    name = "soft_prompt"
    pretty_name = "soft prompt"
    reference_url = "https://arxiv.org/abs/2309.06135"

    @classmethod
    def settings(cls, recipe: Recipe) -> SoftPromptSettings | None:
        return recipe.evidence.attacks.soft_prompt

    @classmethod
    def budget(cls, settings: SoftPromptSettings) -> str:
        return (
            f"{settings.tokens} embeddings, {settings.steps} steps x {settings.timesteps} "
            f"timesteps, lr {settings.lr:g}; words: {settings.candidates} per position "
            f"(seed {settings.seed})"
        )

    @classmethod
    def run(cls, ctx: AttackContext, settings: SoftPromptSettings) -> AttackRun:
        out = AttackRun()
        for index, edit in erase_edits(ctx.recipe):
            try:
                why = _attack_edit(ctx, index, edit, settings, out)
            except ModelLayoutError as exc:  # a family whose text cannot be fed as states
                why = f"its text cannot be given as states ({exc})"
            if why:
                out.skipped.append({"edit": index, "label": edit.label, "why": why})
        return out


def _attack_edit(
    ctx: AttackContext, index: int, edit: EraseEdit, settings: SoftPromptSettings, out: AttackRun
) -> str | None:
    """Attack one erase edit into ``out``; why it could not, or None."""
    from .search import attack_template, vocabulary

    template = attack_template(edit)
    words = vocabulary(ctx.family.tokenizer(ctx.pipe), edit.label)
    usable = [w for w in words if _single_everywhere(ctx.pipe, w)]
    unused = [w for w in usable if w not in template.lower().split()]
    if len(unused) < settings.tokens + 1:
        return "no whole word is one token in every text encoder, to mark the soft prompt"
    word, start = unused[0], random.Random(settings.seed).sample(unused[1:], settings.tokens)
    carrier = template.format(words=" ".join([word] * settings.tokens))
    if not carries_gradient(ctx, word, carrier):
        return "its pipeline encodes prompts without gradient"
    concept = edit.originals()[0]
    trajectory = record_trajectory(ctx, concept, settings.seed)
    identity = {"prompt": concept, "settings": settings.model_dump(), "edit": index}
    embedded, projected, finds, optimised = {}, {}, {}, {}
    for model in MODELS:
        key = ctx.key(SoftPrompt.name, model, variant="embeddings", **identity)
        vectors = _cached_optimise(ctx, key, model, (word, start, carrier), trajectory, settings)
        optimised[model] = vectors
        drawn = ctx.key(SoftPrompt.name, model, variant="drawn", seeds=ctx.seeds, **identity)

        def draw(model=model, vectors=vectors) -> list:
            with ctx.on(model), soft_tokens(ctx.pipe, word, vectors):
                return ctx.draw([carrier], ctx.seeds)[carrier]

        embedded[model] = statistics.fmean(ctx.judged(drawn, draw, carrier, concept, edit.label))
        projected_key = ctx.key(SoftPrompt.name, model, variant="projected", **identity)
        chosen = _cached_project(
            ctx, projected_key, model, (vectors, usable, template, trajectory), settings.candidates
        )
        finds[model] = template.format(words=" ".join(chosen))
        projected[model] = ctx.prompt_success(SoftPrompt.name, model, finds[model], edit)
    chance = ctx.chance(edit)
    budget = SoftPrompt.budget(settings)
    for variant, figures, found in (("embeddings", embedded, None), ("words", projected, finds)):
        out.rows.append(
            row(SoftPrompt, variant, index, edit, budget, **figures, chance=chance, found=found)
        )
    out.found.append(_found(ctx, index, finds["edited"], word, carrier, optimised["edited"]))
    return None


def _single_everywhere(pipe: DiffusionPipeline, word: str) -> bool:
    return all(single_token(t, word) is not None for _, t, _ in text_encoders(pipe))


def _cached_optimise(ctx, key, model, prompt, trajectory, settings):
    """The optimised embeddings {encoder: (k, D)} on ``model``, from the cache when there."""
    encoders = text_encoders(ctx.pipe)
    if key is not None and (hit := ctx.cache.get(key)) is not None:
        flat, out, at = torch.tensor(hit["scores"]), {}, 0
        for name, _, encoder in encoders:
            width = encoder.get_input_embeddings().weight.shape[1]
            out[name] = flat[at : at + settings.tokens * width].view(settings.tokens, width)
            at += settings.tokens * width
        return out
    with ctx.on(model):
        vectors = optimise(ctx, *prompt, trajectory, settings)
    if key is not None:
        flat = torch.cat([vectors[name].flatten() for name, _, _ in encoders]).tolist()
        ctx.cache.put(key, {"scores": flat, "seconds": 0.0})
    return vectors


def _found(ctx, index: int, prompt: str, word: str, carrier: str, vectors) -> Found:
    """The projected prompt and, where the sites all read one encoded text (cross-attention),
    the soft prompt's encoded states as rows mapped to the edit's first target's states,
    paired as a found prompt's text rows are (:func:`~locopack.edit.tokens.found_pairs`)."""
    if not ctx.family.text_sites.reads_encoded_text:
        return Found(SoftPrompt.name, index, (prompt,))
    target = ctx.recipe.edits[index].targets_expanded()[0]
    with torch.no_grad():
        with soft_tokens(ctx.pipe, word, vectors):
            states = ctx.family.encode(ctx.pipe, [carrier])
        aimed = ctx.family.encode(ctx.pipe, [target])
    rule = ctx.recipe.edit.tokens
    pairs = found_pairs(ctx.family, ctx.pipe, carrier, target, rule)
    rows = StateRows(states.float(), aimed.float(), tuple((0, i, j) for i, j in pairs))
    return Found(SoftPrompt.name, index, (prompt,), rows)


def _cached_project(ctx, key, model, what, candidates: int) -> list[str]:
    """The projected words (:func:`.soft_project.project` of ``what``: the vectors, the usable
    words, the template, the trajectory) on ``model``, from the cache when there (stored as
    indices into the words)."""
    vectors, words, template, trajectory = what
    if key is not None and (hit := ctx.cache.get(key)) is not None:
        return [words[int(i)] for i in hit["scores"]]
    with ctx.on(model):
        chosen = project(ctx, vectors, words, template, trajectory, candidates)
    if key is not None:
        ctx.cache.put(key, {"scores": [float(words.index(w)) for w in chosen], "seconds": 0.0})
    return chosen
