"""Chroma (FLUX.1's layout, T5 alone, the negative prompt's call apart): sites in the order
hooks fire, the text arguments the transformer receives, a swap that leaves the negative
prompt's call alone, planted windows found in full and fast mode, the adapter through
``ChromaPipeline``'s own ``load_lora_weights`` equal to the merged checkpoint, and the twin
recipe built and audited."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import ChromaPipeline, DiffusionPipeline

import locopack
from locopack.cli import cli
from locopack.edit import compute_delta
from locopack.export import write_adapter, write_merged
from locopack.localize import Rung, Sweep, localize, prompt_pairs
from locopack.localize.planted import ReferenceScorer, planted_text_window
from locopack.localize.windows import PromptPair
from locopack.models import get_family, load_denoiser_layout, load_pipeline
from locopack.recipe import parse_recipe

from .test_models_dit import REAL_LAYOUTS

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a painting of a dog in the style of van gogh"
SIZE = {"height": 16, "width": 16}
#: T5 tokens of the tests (the pipeline's default, 512, only costs time here)
LENGTH = 24

RECIPE = """
version: 1
name: planted-chroma
base: {{model: {model}}}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting of a cat in the style of {{concept}}", "{{concept}} starry night"]
    target: "a photo of a red car"
    preserve: ["a photo of a cat"]
localize: {{window: 1, steps: {steps}, guidance: 3.0, seeds: [0], prompts_per_edit: 2,
           scorer: ./unused, mode: {mode}, resolution: 16}}
edit: {{lambda: 0.1, matrices: both, tokens: cover, seeds: [0], timesteps: [0.0, 1.0],
       allow_image_sites: true}}
"""


@pytest.fixture(scope="module")
def chroma_dir(tmp_path_factory):
    return get_family("chroma").save_twin(tmp_path_factory.mktemp("chroma") / "twin", seed=0)


@pytest.fixture(scope="module")
def chroma_pipe(chroma_dir):
    pipe, family = load_pipeline(str(chroma_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe, family.with_t5_length(LENGTH)


def _recipe(model, mode="full", steps=2):
    return parse_recipe(RECIPE.format(model=model, mode=mode, steps=steps), "planted.yaml")


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
    result = CliRunner().invoke(cli, ["layers", str(chroma_dir), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed["family"] == "chroma" and not listed["pooled_text_path"]
    pipe, family = chroma_pipe
    fired: list[str] = []
    handles = [
        pipe.transformer.get_submodule(module).register_forward_hook(
            lambda _m, _i, _o, module=module: fired.append(module)
        )
        for site in listed["sites"]
        for module in (site["key"], site["value"])
    ]
    try:
        _generate(pipe, family, PROMPT, guidance=1.0, steps=1)
    finally:
        for handle in handles:
            handle.remove()
    assert fired == [m for site in listed["sites"] for m in (site["key"], site["value"])]
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
    recipe = _recipe(chroma_dir, mode, steps)
    with planted_text_window(pipe, family, start, 1) as paths:
        originals = [p.original for p in prompt_pairs(recipe)]
        scorer = ReferenceScorer(pipe, family, originals, steps, 3.0, resolutions=(16,))
        result = localize(
            pipe, family, recipe, scorer=scorer, progress=False, batch=9, full_references=True
        )
    assert result.layers == [paths[start]] and result.mode == mode
    assert result.pooled_only is None
    assert result.baseline.mean == pytest.approx(0.0, abs=0.01)  # batched vs one: rounding
    chosen = result.candidates[result.chosen]
    assert chosen.mean == pytest.approx(result.all_sites.mean, abs=0.01) and chosen.mean < -0.02


def _denoise(pipe):
    transformer = pipe.transformer
    gen = torch.Generator().manual_seed(0)
    return transformer(
        hidden_states=torch.randn(2, 16, transformer.config.in_channels, generator=gen),
        timestep=torch.tensor([0.5, 0.5]),
        encoder_hidden_states=torch.randn(2, 20, 32, generator=gen),
        txt_ids=torch.zeros(20, 3),
        img_ids=torch.randn(16, 3, generator=gen),
        return_dict=False,
    )[0]


@torch.no_grad()
def test_the_adapter_loaded_by_chroma_pipeline_equals_the_merged_checkpoint(chroma_dir, tmp_path):
    pipe, family = load_pipeline(str(chroma_dir))
    pipe.set_progress_bar_config(disable=True)
    family = family.with_t5_length(LENGTH)
    sites = [s.path for s in family.sites(pipe.transformer)]
    delta = compute_delta(pipe, family, _recipe(chroma_dir), sites[1:4])  # one single-stream
    write_adapter(delta, tmp_path, max_rank=64, energy=0.99999999)
    write_merged(pipe, family, delta, tmp_path / "merged")
    with_adapter = DiffusionPipeline.from_pretrained(str(chroma_dir))
    assert isinstance(with_adapter, ChromaPipeline)
    with_adapter.load_lora_weights(str(tmp_path))  # FluxLoraLoaderMixin, as a user would
    applied, _ = load_pipeline(str(chroma_dir))
    assert locopack.apply(applied, tmp_path).kind == "adapter"
    merged = DiffusionPipeline.from_pretrained(str(tmp_path / "merged"))
    a, p, m, b = (_denoise(x) for x in (with_adapter, applied, merged, pipe))
    assert (a - m).abs().max() <= 1e-5
    assert (p - m).abs().max() <= 1e-5
    assert (m - b).abs().max() > 1e-3  # the edit does change the outputs


def test_the_real_layout_is_flux_without_the_pooled_path(tmp_path):
    pipeline_class, config = REAL_LAYOUTS["lodestones/Chroma1-HD"]
    (tmp_path / "transformer").mkdir()
    index = {"_class_name": pipeline_class, "transformer": ["diffusers", config["_class_name"]]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(config))
    family, denoiser = load_denoiser_layout(str(tmp_path))
    sites = family.sites(denoiser)
    assert family.name == "chroma" and len(sites) == 57
    assert sum(not s.text_only for s in sites) == 38
    assert {(s.in_features, s.out_features) for s in sites} == {(3072, 3072)}


@pytest.mark.slow
def test_the_twin_recipe_builds_and_audits_with_a_full_reproduction(tmp_path):
    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--threads", "1", *args])
        assert result.exit_code == 0, result.output
        return result.output

    recipe = tmp_path / "chroma-erase-van-gogh.yaml"
    recipe.write_text((ROOT / "recipes" / "twin" / recipe.name).read_text())
    run("twin", "chroma", str(tmp_path / "out" / "tiny-chroma"))
    run("build", str(recipe), "--out", str(tmp_path / "release"))
    audit = run("audit", str(tmp_path / "release"), "--reproduce", "full")
    assert "LocoGen (full mode) chose the same window" in audit
    assert "gives the same delta" in audit
    card = (tmp_path / "release" / "README.md").read_text()
    assert "pooled" not in card.lower()
    onnx = CliRunner().invoke(
        cli, ["export", str(tmp_path / "release" / "delta.safetensors"), "--onnx", "--model",
              str(tmp_path / "out" / "tiny-chroma"), "--out", str(tmp_path / "onnx")],
    )  # fmt: skip
    assert onnx.exit_code == 1
    assert onnx.output.strip().splitlines()[-1] == (
        "error: ONNX export is not supported for Chroma models: no ONNX inputs defined for "
        "ChromaTransformer2DModel"
    )
