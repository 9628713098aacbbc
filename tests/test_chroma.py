"""Chroma (FLUX.1's layout, T5 alone, the negative prompt's call apart): sites in the order
hooks fire, the text arguments the transformer receives, a swap that leaves the negative
prompt's call alone, planted windows found in full and fast mode, the adapter through
``ChromaPipeline``'s own ``load_lora_weights`` equal to the merged checkpoint, the published
layout, and the twin recipe built and audited."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locopack.localize import Rung, Sweep, localize, prompt_pairs
from locopack.localize.planted import ReferenceScorer, planted_text_window
from locopack.localize.windows import PromptPair
from locopack.models import LoadedBase, get_family, load_pipeline

from .family_checks import (
    adapter_equals_merged,
    listed_sites_fire_in_order,
    real_layout,
    recipe,
    twin_recipe_builds_and_audits,
)
from .test_models_dit import REAL_LAYOUTS

PROMPT = "a painting of a dog in the style of van gogh"
SIZE = {"height": 16, "width": 16}
#: T5 tokens of the tests (the pipeline's default, 512, only costs time here)
LENGTH = 24


@pytest.fixture(scope="module")
def chroma_dir(tmp_path_factory):
    return get_family("chroma").save_twin(tmp_path_factory.mktemp("chroma") / "twin", seed=0)


@pytest.fixture(scope="module")
def chroma_pipe(chroma_dir):
    pipe, family = load_pipeline(str(chroma_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe, family.with_t5_length(LENGTH)


def _generate(pipe, family, prompt, n=1, guidance=3.0, steps=2):
    return pipe(
        prompt,
        num_images_per_prompt=n,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(0) for _ in range(n)],
        output_type="pil",
        **SIZE,
        **family.call_kwargs(),
    ).images


def test_layers_lists_the_sites_in_the_order_their_hooks_fire(chroma_dir, chroma_pipe):
    pipe, family = chroma_pipe
    run = lambda: _generate(pipe, family, PROMPT, guidance=1.0, steps=1)  # noqa: E731
    listed = listed_sites_fire_in_order(chroma_dir, pipe, run)
    assert listed["family"] == "chroma" and not listed["pooled_text_path"]
    assert [s["text_only"] for s in listed["sites"]] == [True] * 3 + [False] * 3


def test_text_arguments_are_what_the_conditional_call_receives(chroma_pipe):
    pipe, family = chroma_pipe
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda _m, _a, kwargs: calls.append(kwargs), with_kwargs=True
    )
    try:
        _generate(pipe, family, PROMPT, steps=1)
    finally:
        handle.remove()
    assert len(calls) == 2  # guidance: the conditional call, then the negative prompt's
    with torch.no_grad():
        text = family.text_arguments(pipe, [PROMPT])
    assert sorted(text) == ["attention_mask", "encoder_hidden_states"]
    states, mask = text["encoder_hidden_states"], text["attention_mask"]
    assert states.shape[1] == LENGTH
    torch.testing.assert_close(calls[0]["encoder_hidden_states"], states, rtol=0, atol=0)
    torch.testing.assert_close(calls[0]["attention_mask"][:, :LENGTH], mask, rtol=0, atol=0)
    ids = pipe.tokenizer(PROMPT).input_ids
    assert int(mask.sum()) == len(ids) + 1  # the prompt's tokens and one padding position
    positions = family.concept_positions(pipe, PROMPT, "van gogh")
    assert pipe.tokenizer.decode([ids[i] for i in positions]).replace(" ", "") == "vangogh"


def test_the_swap_leaves_the_negative_call_alone_and_nothing_moves_without_a_change(chroma_pipe):
    pipe, family = chroma_pipe
    rung = Rung(2, 3.0, (0,), 16)
    same = Sweep(pipe, family, [PromptPair(PROMPT, PROMPT, PROMPT, 1)], None)
    assert same.pooled_window is None  # no pooled path to swap alone
    paths = same.site_paths
    plain = _generate(pipe, family, PROMPT, n=3)
    swapped = same._images(0, [[], paths, paths[2:4]], 0, rung)
    for image, reference in zip(swapped, plain, strict=True):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(reference))
    outputs = []
    handle = pipe.transformer.register_forward_hook(lambda _m, _a, out: outputs.append(out[0]))
    try:
        other = Sweep(pipe, family, [PromptPair(PROMPT, "a photo of a red car", PROMPT, 1)], None)
        moved = other._images(0, [paths[1:3]], 0, Rung(1, 3.0, (0,), 16))
        _generate(pipe, family, PROMPT, steps=1)
    finally:
        handle.remove()
    # calls: alongside, conditional, negative (swapped run); conditional, negative (plain)
    assert len(outputs) == 5
    torch.testing.assert_close(outputs[2], outputs[4], rtol=0, atol=0)
    assert (outputs[1] - outputs[3]).abs().max() > 1e-4
    assert np.abs(np.asarray(moved[0], float) - np.asarray(plain[0], float)).max() > 0


@pytest.mark.slow
@pytest.mark.parametrize(("start", "mode"), [(1, "full"), (4, "full"), (2, "fast")])
def test_a_planted_single_site_window_is_found(start, mode, chroma_dir):
    base = get_family("chroma").with_t5_length(LENGTH)
    family = type(base.__name__, (base,), {"twin_layers": (4, 5)})
    pipe = family.build_twin(seed=0)
    pipe.set_progress_bar_config(disable=True)
    steps = 5 if mode == "fast" else 2
    planted = recipe(chroma_dir, steps=steps, mode=mode)
    with planted_text_window(pipe, family, start, 1) as paths:
        originals = [p.original for p in prompt_pairs(planted)]
        scorer = ReferenceScorer(pipe, family, originals, steps, 3.0, resolutions=(16,))
        result = localize(
            LoadedBase(pipe, family),
            planted,
            scorer=scorer,
            progress=False,
            batch=9,
            full_references=True,
        )
    assert result.layers == [paths[start]] and result.mode == mode
    assert result.pooled_only is None
    assert result.baseline.mean == pytest.approx(0.0, abs=0.01)  # batched vs one: rounding
    chosen = result.candidates[result.chosen]
    assert chosen.mean == pytest.approx(result.all_sites.mean, abs=0.01) and chosen.mean < -0.02


def _denoise(transformer):
    gen = torch.Generator().manual_seed(0)
    return transformer(
        hidden_states=torch.randn(2, 16, transformer.config.in_channels, generator=gen),
        timestep=torch.tensor([0.5, 0.5]),
        encoder_hidden_states=torch.randn(2, 20, 32, generator=gen),
        txt_ids=torch.zeros(20, 3),
        img_ids=torch.randn(16, 3, generator=gen),
        return_dict=False,
    )[0]


def test_the_adapter_loaded_by_chroma_pipeline_equals_the_merged_checkpoint(chroma_dir, tmp_path):
    family = get_family("chroma").with_t5_length(LENGTH)
    sites = [s.path for s in family.sites(load_pipeline(str(chroma_dir))[0].transformer)]
    # two double-stream sites and a single-stream one (opted in); FluxLoraLoaderMixin loads it
    adapter_equals_merged(chroma_dir, tmp_path, family, sites[1:4], recipe(chroma_dir), _denoise)


def test_the_real_layout_is_flux_without_the_pooled_path(tmp_path):
    family, denoiser = real_layout(tmp_path, *REAL_LAYOUTS["lodestones/Chroma1-HD"])
    sites = family.sites(denoiser)
    assert family.name == "chroma" and len(sites) == 57
    assert sum(not s.text_only for s in sites) == 38
    assert {(s.in_features, s.out_features) for s in sites} == {(3072, 3072)}


@pytest.mark.slow
def test_the_twin_recipe_builds_and_audits_with_a_full_reproduction(tmp_path):
    release = twin_recipe_builds_and_audits(tmp_path, "chroma", "chroma-erase-van-gogh.yaml")
    assert "pooled" not in (release / "README.md").read_text().lower()
