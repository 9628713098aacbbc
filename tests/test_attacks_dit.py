"""The concept-vector and soft-prompt attacks on the T5-conditioned twins (SD3, FLUX.1): the
T5 path carries the concept vector and the soft prompt's gradient, and both attacks run,
deterministically, on base and edited."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from locopack.evidence.attacks import AttackContext
from locopack.evidence.attacks.concept_vector import ConceptVector, concept_direction
from locopack.evidence.attacks.context import without_concept
from locopack.evidence.attacks.feed import single_token, soft_tokens
from locopack.evidence.attacks.soft_optimise import optimise, record_trajectory
from locopack.evidence.attacks.soft_prompt import SoftPrompt
from locopack.evidence.detectors import Detector
from locopack.models import LoadedBase, get_family
from locopack.recipe import load_recipe
from locopack.recipe.attacks import ConceptVectorSettings, SoftPromptSettings

ROOT = Path(__file__).resolve().parents[1]
#: the twin's T5 encoder and where its part of the text sequence starts (SD3: after 77 CLIP)
T5 = {"sd3": ("text_encoder_3", "tokenizer_3", 77), "flux": ("text_encoder_2", "tokenizer_2", 0)}


def _bright(images, prompts):
    """A rate detector for twins: 'van gogh' where the image is brighter than mid-grey."""
    return [{"van gogh": float(np.asarray(image, float).mean() > 127)} for image in images]


@pytest.fixture(scope="module", params=["sd3", "flux"])
def twin(request):
    from locopack.evidence.before_after import generate_images

    family = get_family(request.param)
    pipe = family.build_twin(seed=0)
    pipe.set_progress_bar_config(disable=True)
    recipe = load_recipe(ROOT / "recipes" / "twin" / f"{request.param}-erase-van-gogh.yaml")

    def draw(prompts, seeds):
        return generate_images(LoadedBase(pipe, family), prompts, seeds, 2, 3.0, 16)

    # the "edited" model: every text key projection of the first block scaled, reversibly
    key = pipe.transformer.transformer_blocks[0].attn.add_k_proj

    @contextlib.contextmanager
    def edited():
        saved = key.weight.detach().clone()
        with torch.no_grad():
            key.weight.mul_(0.5)
        try:
            yield
        finally:
            with torch.no_grad():
                key.weight.copy_(saved)

    ctx = AttackContext(
        pipe, family, recipe, draw, edited, Detector("bright", _bright), None, [0, 1],
        2, 3.0, 16, lambda stem, rows: "",
    )  # fmt: skip
    return request.param, ctx


def _t5_states(pipe, name, prompts):
    encoder, tokenizer = getattr(pipe, T5[name][0]), getattr(pipe, T5[name][1])
    ids = tokenizer(
        prompts, padding="max_length", max_length=256, truncation=True, return_tensors="pt"
    ).input_ids
    return encoder(ids)[0]


@torch.no_grad()
def test_the_concept_vector_is_the_t5_difference_on_its_t5_part(twin):
    name, ctx = twin
    edit = ctx.recipe.edits[0]
    vector, free = concept_direction(ctx, edit, 2)
    start = T5[name][2]
    with_concept = _t5_states(ctx.pipe, name, edit.originals()[:2])
    expected = (with_concept - _t5_states(ctx.pipe, name, free)).mean(dim=0)
    assert free == [without_concept(t) for t in edit.prompts[:2]]
    assert expected.abs().max() > 1e-3  # the concept moves T5's states
    part = vector[start : start + 256, : expected.shape[1]]
    assert torch.allclose(part, expected, atol=1e-5)


@torch.no_grad()
def test_a_soft_prompt_of_t5_word_embeddings_encodes_as_those_words(twin):
    name, ctx = twin
    pipe = ctx.pipe
    vectors = {}
    for enc, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"),
                     ("text_encoder_3", "tokenizer_3")):  # fmt: skip
        if getattr(pipe, enc, None) is not None:
            table = getattr(pipe, enc).get_input_embeddings().weight
            ids = [single_token(getattr(pipe, tok), w) for w in ("cat", "river")]
            vectors[enc] = table[ids]
    with soft_tokens(pipe, "snoopy", vectors):
        soft = ctx.family.encode_with_pooled(pipe, ["a painting of snoopy snoopy"])
    words = ctx.family.encode_with_pooled(pipe, ["a painting of cat river"])
    assert torch.equal(soft[0], words[0]) and torch.equal(soft[1], words[1])


def test_the_soft_prompts_gradient_reaches_the_t5_embeddings(twin):
    name, ctx = twin
    settings = SoftPromptSettings(steps=3, timesteps=1)
    trajectory = record_trajectory(ctx, "a painting in the style of van gogh", 0)
    assert len(trajectory) == 2 and all(len(call) == 3 for call in trajectory)
    carrier = "a painting in the style of snoopy snoopy snoopy"
    found = optimise(ctx, "snoopy", ["cat", "river", "tree"], carrier, trajectory, settings)
    t5 = T5[name][0]
    table = getattr(ctx.pipe, t5).get_input_embeddings().weight
    tokenizer = getattr(ctx.pipe, T5[name][1])
    start = table[[single_token(tokenizer, w) for w in ("cat", "river", "tree")]]
    assert found[t5].shape == start.shape
    assert (found[t5] - start).abs().max() > 0  # moved by the gradient through T5
    assert all(p.requires_grad for p in ctx.denoiser.parameters())  # restored after


@pytest.mark.parametrize("attack", [ConceptVector, SoftPrompt])
def test_both_attacks_run_on_the_twin_deterministically(twin, attack):
    name, ctx = twin
    settings = {
        ConceptVector: ConceptVectorSettings(steps=6),
        SoftPrompt: SoftPromptSettings(steps=2, timesteps=1),
    }[attack]
    with torch.no_grad():
        first, second = attack.run(ctx, settings), attack.run(ctx, settings)
    assert first.rows and first.rows == second.rows and not first.skipped
    assert all(0.0 <= r[m] <= 1.0 for r in first.rows for m in ("base", "edited"))
    assert [r["name"].split("(")[1] for r in first.rows] in (
        ["states)", "words)"],
        ["embeddings)", "words)"],
    )
    (found,) = first.found
    assert found.rows is None  # joint attention: no site reads one encoded text
    assert found.prompts and "van gogh" not in found.prompts[0]
