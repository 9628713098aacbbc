"""LocoGen on the joint-attention transformers (SD3, FLUX) through the sweep: planted windows
are found exactly in full and fast modes, an intervention that changes nothing reproduces
the pipeline bit for bit, and the pooled path is a reference line of its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locopack.errors import ModelLayoutError
from locopack.hooks.joint import POOLED, swap_windows
from locopack.localize import Rung, Sweep, localize, prompt_pairs
from locopack.localize.planted import ReferenceScorer, planted_text_window
from locopack.localize.windows import PromptPair
from locopack.models import LoadedBase, get_family
from locopack.recipe import parse_recipe

RECIPE = """
version: 1
name: planted-dit
base: {{model: ./unused}}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting of a cat in the style of {{concept}}", "{{concept}} starry night"]
    target: "a photo of a red car"
localize: {{window: {window}, steps: {steps}, guidance: 3.0, seeds: [0], prompts_per_edit: 2,
           scorer: ./unused, mode: {mode}, resolution: 16}}
"""
#: blocks of the deeper twins: 9 sites each, enough windows of one site for fast mode to race
#: (FLUX.2 with a short text, as its twin recipe sets one)
DEEP = {
    "sd3": {"twin_layers": 9},
    "flux": {"twin_layers": (4, 5)},
    "flux2": {"twin_layers": (9, 1), "t5_length": 64},
}


@pytest.fixture(scope="module")
def deep_pipes():
    """{family name: (pipeline, family)} of twins with 9 sites each (FLUX: 4 double-stream
    blocks, then 5 single-stream ones; FLUX.2: 9 double-stream blocks), built in memory."""
    found = {}
    for name, layout in DEEP.items():
        base = get_family(name)
        family = type(base.__name__, (base,), layout)
        found[name] = (family.build_twin(seed=0), family)
    return found


def _recipe(window, mode):
    steps = 5 if mode == "fast" else 2  # too few steps to screen at fewer
    return parse_recipe(RECIPE.format(window=window, steps=steps, mode=mode), "planted.yaml")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, start, size, mode",
    [
        ("sd3", 0, 1, "full"),
        ("sd3", 4, 2, "full"),
        ("sd3", 6, 2, "fast"),
        ("sd3", 8, 1, "fast"),
        ("flux", 1, 1, "full"),
        ("flux", 3, 2, "fast"),  # the last double-stream block and the first single one
        ("flux", 6, 2, "full"),
        ("flux", 7, 1, "fast"),
        ("flux2", 2, 1, "full"),
        ("flux2", 6, 2, "fast"),
    ],
)
def test_planted_window_is_found(name, start, size, mode, deep_pipes):
    pipe, family = deep_pipes[name]
    recipe = _recipe(size, mode)
    settings = recipe.localize
    with planted_text_window(pipe, family, start, size) as paths:
        scorer = ReferenceScorer(
            pipe,
            family,
            [p.original for p in prompt_pairs(recipe)],
            steps=settings.steps,
            guidance=settings.guidance,
            resolutions=(settings.resolution,),
        )
        result = localize(
            LoadedBase(pipe, family),
            recipe,
            scorer=scorer,
            progress=False,
            batch=9,
            full_references=True,
        )
    assert result.mode == mode and (result.rounds is not None) == (mode == "fast")
    assert result.chosen == start
    assert result.layers == paths[start : start + size]
    # the baseline is the reference itself; the planted window carries the whole effect
    chosen = result.candidates[result.chosen]
    assert result.baseline.mean == 0.0
    assert chosen.mean == pytest.approx(result.all_sites.mean, abs=0.01)
    assert chosen.mean < -0.02
    planted = set(result.layers)
    for candidate in result.candidates:  # windows the text cannot reach draw the reference
        if not set(candidate.window) & planted:
            assert abs(candidate.mean) <= 0.005, candidate.window
    # the pooled line: the pooled vector alone swapped (the planting does not hold it there)
    if family.has_pooled_text_path:
        assert result.pooled_only.window == [POOLED] and result.pooled_only.mean < chosen.mean
    else:  # FLUX.2 has no pooled vector, so no such line
        assert result.pooled_only is None


def _plain(pipe, family, prompt, n, rung):
    return pipe(
        prompt=prompt,
        num_images_per_prompt=n,
        num_inference_steps=rung.steps,
        guidance_scale=rung.guidance,
        generator=[torch.Generator().manual_seed(0) for _ in range(n)],
        output_type="pil",
        height=rung.resolution,
        width=rung.resolution,
        **family.call_kwargs(),
    ).images


@pytest.mark.parametrize("name", ["sd3", "flux", "flux2"])
def test_no_window_or_the_same_prompt_reproduces_the_pipeline_bit_for_bit(name, deep_pipes):
    pipe, family = deep_pipes[name]
    prompt = "a painting of a cat in the style of van gogh"
    rung = Rung(2, 3.0, (0,), 16)
    same = Sweep(pipe, family, [PromptPair(prompt, prompt, prompt, 1)], lambda i, t: [0.0] * len(i))
    paths = same.site_paths
    pooled = [[POOLED], [POOLED, *paths[:2]]] if family.has_pooled_text_path else []
    windows = [[], paths, paths[2:5], *pooled]
    swapped = same._images(0, windows, 0, rung)
    plain = _plain(pipe, family, prompt, len(windows), rung)
    for image, reference in zip(swapped, plain, strict=True):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(reference))
    np.testing.assert_array_equal(
        np.asarray(same._images(0, [[]], 0, rung)[0]),
        np.asarray(_plain(pipe, family, prompt, 1, rung)[0]),
    )
    # another prompt at no window changes nothing either; at the pooled path alone (FLUX.2,
    # which has none: at every site) it does
    other = Sweep(pipe, family, [PromptPair(prompt, "a photo of a red car", prompt, 1)], None)
    if not family.has_pooled_text_path:
        assert other.pooled_window is None
        with pytest.raises(ModelLayoutError, match="no altered pooled vector"):
            other._images(0, [[POOLED]], 0, rung)
    moved = other._images(0, [[], [POOLED] if family.has_pooled_text_path else paths], 0, rung)
    np.testing.assert_array_equal(np.asarray(moved[0]), np.asarray(plain[0]))
    assert np.abs(np.asarray(moved[1], float) - np.asarray(plain[0], float)).max() > 0


def test_the_pooled_path_is_refused_where_it_cannot_be_swapped(twin_pipes, deep_pipes):
    pipe, family = twin_pipes["sdxl"]
    states = torch.zeros(77, 32)
    with pytest.raises(ModelLayoutError, match="pooled path"):
        swap_windows(family, pipe.unet, [[POOLED]], states, states)
    pipe, family = deep_pipes["flux"]
    with pytest.raises(ModelLayoutError, match="no altered pooled vector"):
        swap_windows(family, pipe.transformer, [[POOLED]], states, states)
