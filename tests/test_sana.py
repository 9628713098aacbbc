"""SANA (cross-attention to Gemma, like PixArt): sites in the order hooks fire, encoding,
planted windows found in full and fast mode, the adapter through ``SanaPipeline``'s own
``load_lora_weights`` equal to the merged checkpoint, and the twin recipe built and audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from diffusers import DiffusionPipeline, SanaPipeline

import locopack
from locopack.cli import cli
from locopack.edit import compute_delta
from locopack.export import write_adapter, write_merged
from locopack.localize import localize, prompt_pairs
from locopack.localize.planted import ReferenceScorer, plant_window
from locopack.models import get_family, load_pipeline
from locopack.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a painting of a dog in the style of van gogh"
#: SANA's pipeline takes image sizes in multiples of 32
SIZE = 32

RECIPE = """
version: 1
name: planted-sana
base: {{model: {model}}}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting of a cat in the style of {{concept}}", "{{concept}} starry night"]
    target: "a photo of a red car"
    preserve: ["a photo of a cat"]
localize: {{window: {window}, steps: {steps}, guidance: 3.0, seeds: [0], prompts_per_edit: 2,
           scorer: ./unused, mode: {mode}, resolution: 32}}
edit: {{lambda: 0.1, matrices: both, tokens: cover}}
"""


@pytest.fixture(scope="module")
def sana_dir(tmp_path_factory):
    return get_family("sana").save_twin(tmp_path_factory.mktemp("sana") / "twin", seed=0)


@pytest.fixture(scope="module")
def sana_pipe(sana_dir):
    pipe, family = load_pipeline(str(sana_dir))
    return pipe, family


def _recipe(model, window=1, mode="full", steps=2):
    text = RECIPE.format(model=model, window=window, mode=mode, steps=steps)
    return parse_recipe(text, "planted.yaml")


def test_layers_lists_the_sites_in_the_order_their_hooks_fire(sana_dir, sana_pipe):
    result = CliRunner().invoke(cli, ["layers", str(sana_dir), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed["family"] == "sana" and not listed["pooled_text_path"]
    pipe, family = sana_pipe
    fired: list[str] = []
    handles = [
        pipe.transformer.get_submodule(module).register_forward_hook(
            lambda _m, _i, _o, module=module: fired.append(module)
        )
        for site in listed["sites"]
        for module in (site["key"], site["value"])
    ]
    try:
        pipe(PROMPT, num_inference_steps=1, height=SIZE, width=SIZE, **family.call_kwargs())
    finally:
        for handle in handles:
            handle.remove()
    assert fired == [m for site in listed["sites"] for m in (site["key"], site["value"])]
    paths = [f"transformer_blocks.{i}.attn2" for i in range(4)]
    assert [s["path"] for s in listed["sites"]] == paths


def test_encode_is_what_every_site_reads_and_the_concept_is_found(sana_pipe):
    pipe, family = sana_pipe
    seen = {}
    sites = family.sites(pipe.transformer)
    handles = [
        pipe.transformer.get_submodule(site.key).register_forward_pre_hook(
            lambda _m, args, path=site.path: seen.setdefault(path, args[0].clone())
        )
        for site in sites
    ]
    try:
        pipe(PROMPT, num_inference_steps=1, guidance_scale=1.0, height=SIZE, width=SIZE,
             **family.call_kwargs())  # fmt: skip
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        states = family.encode(pipe, [PROMPT])
    assert states.shape[1] == family.max_length(pipe) == 300
    for site in sites:
        torch.testing.assert_close(seen[site.path], states, rtol=0, atol=0)
    positions = family.concept_positions(pipe, PROMPT, "Van Gogh")
    ids = pipe.tokenizer(PROMPT).input_ids
    assert pipe.tokenizer.decode([ids[i] for i in positions]).replace(" ", "") == "vangogh"
    mask = family.attention_mask(pipe, [PROMPT])
    assert int(mask.sum()) == len(ids) and ids[0] == pipe.tokenizer.bos_token_id


@pytest.mark.slow
@pytest.mark.parametrize(("start", "mode"), [(1, "full"), (2, "fast"), (3, "full")])
def test_a_planted_single_site_window_is_found(start, mode, sana_dir):
    pipe, family = load_pipeline(str(sana_dir))
    paths = plant_window(pipe, family, start, 1)
    steps = 5 if mode == "fast" else 2
    recipe = _recipe(sana_dir, mode=mode, steps=steps)
    originals = [p.original for p in prompt_pairs(recipe)]
    scorer = ReferenceScorer(pipe, family, originals, steps=steps, guidance=3.0,
                             resolutions=(SIZE,))  # fmt: skip
    result = localize(
        pipe, family, recipe, scorer=scorer, progress=False, batch=8, full_references=True
    )
    assert result.layers == [paths[start]] and result.mode == mode
    chosen = result.candidates[result.chosen]
    assert result.baseline.mean == pytest.approx(0.0, abs=0.02)
    assert chosen.mean == pytest.approx(result.all_sites.mean, abs=1e-3)


def _denoise(pipe):
    transformer = pipe.transformer
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(2, 12, transformer.config.caption_channels, generator=gen)
    sample = torch.randn(2, transformer.config.in_channels, 8, 8, generator=gen)
    with torch.no_grad():
        return transformer(
            sample, states, torch.tensor([500.0, 500.0]),
            encoder_attention_mask=torch.ones(2, 12), return_dict=False,
        )[0]  # fmt: skip


def test_the_adapter_loaded_by_sana_pipeline_equals_the_merged_checkpoint(sana_dir, tmp_path):
    pipe, family = load_pipeline(str(sana_dir))
    sites = [s.path for s in family.sites(pipe.transformer)]
    delta = compute_delta(pipe, family, _recipe(sana_dir), sites[1:3])
    write_adapter(delta, tmp_path, max_rank=64, energy=0.99999999)
    write_merged(pipe, family, delta, tmp_path / "merged")
    with_adapter = DiffusionPipeline.from_pretrained(str(sana_dir))
    assert isinstance(with_adapter, SanaPipeline)
    with_adapter.load_lora_weights(str(tmp_path))  # plain diffusers, as a user would
    applied, _ = load_pipeline(str(sana_dir))
    assert locopack.apply(applied, tmp_path).kind == "adapter"
    merged = DiffusionPipeline.from_pretrained(str(tmp_path / "merged"))
    a, p, m, b = (_denoise(x) for x in (with_adapter, applied, merged, pipe))
    assert (a - m).abs().max() <= 1e-5
    assert (p - m).abs().max() <= 1e-5
    assert (m - b).abs().max() > 1e-3  # the edit does change the outputs


@pytest.mark.slow
def test_the_twin_recipe_builds_and_audits_with_a_full_reproduction(tmp_path):
    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--threads", "1", *args])
        assert result.exit_code == 0, result.output
        return result.output

    recipe = tmp_path / "sana-erase-van-gogh.yaml"
    recipe.write_text((ROOT / "recipes" / "twin" / recipe.name).read_text())
    run("twin", "sana", str(tmp_path / "out" / "tiny-sana"))
    run("build", str(recipe), "--out", str(tmp_path / "release"))
    audit = run("audit", str(tmp_path / "release"), "--reproduce", "full")
    assert "LocoGen (full mode) chose the same window" in audit
    assert "gives the same delta" in audit
    onnx = CliRunner().invoke(
        cli, ["export", str(tmp_path / "release" / "delta.safetensors"), "--onnx", "--model",
              str(tmp_path / "out" / "tiny-sana"), "--out", str(tmp_path / "onnx")],
    )  # fmt: skip
    assert onnx.exit_code == 1
    assert onnx.output.strip().splitlines()[-1] == (
        "error: ONNX export is not supported for SANA models: no ONNX inputs defined for "
        "SanaTransformer2DModel"
    )


def test_the_real_layout_has_twenty_text_only_sites(tmp_path):
    from locopack.models import load_denoiser_layout

    from .test_models_dit import REAL_LAYOUTS

    pipeline_class, config = REAL_LAYOUTS["Efficient-Large-Model/Sana_1600M_1024px_diffusers"]
    (tmp_path / "transformer").mkdir()
    index = {"_class_name": pipeline_class, "transformer": ["diffusers", config["_class_name"]]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(config))
    family, denoiser = load_denoiser_layout(str(tmp_path))
    sites = family.sites(denoiser)
    assert family.name == "sana" and len(sites) == 20 and all(s.text_only for s in sites)
    assert {(s.in_features, s.out_features) for s in sites} == {(2240, 2240)}
