"""SANA (cross-attention to Gemma, like PixArt): sites in the order hooks fire, encoding,
planted windows found in full and fast mode, the adapter through ``SanaPipeline``'s own
``load_lora_weights`` equal to the merged checkpoint, the published layout, and the twin
recipe built and audited."""

from __future__ import annotations

import pytest
import torch

from locopack.localize import localize, prompt_pairs
from locopack.localize.planted import ReferenceScorer, plant_window
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
#: SANA's pipeline takes image sizes in multiples of 32
SIZE = 32


@pytest.fixture(scope="module")
def sana_dir(tmp_path_factory):
    return get_family("sana").save_twin(tmp_path_factory.mktemp("sana") / "twin", seed=0)


@pytest.fixture(scope="module")
def sana_pipe(sana_dir):
    pipe, family = load_pipeline(str(sana_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe, family


def _run(pipe, family, guidance=3.0):
    return pipe(PROMPT, num_inference_steps=1, guidance_scale=guidance, height=SIZE, width=SIZE,
                output_type="latent", **family.call_kwargs())  # fmt: skip


def test_layers_lists_the_sites_in_the_order_their_hooks_fire(sana_dir, sana_pipe):
    pipe, family = sana_pipe
    listed = listed_sites_fire_in_order(sana_dir, pipe, lambda: _run(pipe, family))
    assert listed["family"] == "sana" and not listed["pooled_text_path"]
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
        _run(pipe, family, guidance=1.0)
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
    planted = recipe(sana_dir, steps=steps, mode=mode, resolution=SIZE)
    originals = [p.original for p in prompt_pairs(planted)]
    scorer = ReferenceScorer(pipe, family, originals, steps, 3.0, resolutions=(SIZE,))
    result = localize(
        LoadedBase(pipe, family),
        planted,
        scorer=scorer,
        progress=False,
        batch=8,
        full_references=True,
    )
    assert result.layers == [paths[start]] and result.mode == mode
    chosen = result.candidates[result.chosen]
    assert result.baseline.mean == pytest.approx(0.0, abs=0.02)
    assert chosen.mean == pytest.approx(result.all_sites.mean, abs=1e-3)


def _denoise(transformer):
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(2, 12, transformer.config.caption_channels, generator=gen)
    sample = torch.randn(2, transformer.config.in_channels, 8, 8, generator=gen)
    return transformer(sample, states, torch.tensor([500.0, 500.0]),
                       encoder_attention_mask=torch.ones(2, 12), return_dict=False)[0]  # fmt: skip


def test_the_adapter_loaded_by_sana_pipeline_equals_the_merged_checkpoint(sana_dir, tmp_path):
    family = get_family("sana")
    sites = ["transformer_blocks.1.attn2", "transformer_blocks.2.attn2"]
    edit = recipe(sana_dir, resolution=SIZE)
    adapter_equals_merged(sana_dir, tmp_path, family, sites, edit, _denoise)


def test_the_real_layout_has_twenty_text_only_sites(tmp_path):
    model = "Efficient-Large-Model/Sana_1600M_1024px_diffusers"
    family, denoiser = real_layout(tmp_path, *REAL_LAYOUTS[model])
    sites = family.sites(denoiser)
    assert family.name == "sana" and len(sites) == 20 and all(s.text_only for s in sites)
    assert {(s.in_features, s.out_features) for s in sites} == {(2240, 2240)}


@pytest.mark.slow
def test_the_twin_recipe_builds_and_audits_with_a_full_reproduction(tmp_path):
    twin_recipe_builds_and_audits(tmp_path, "sana", "sana-erase-van-gogh.yaml")
