"""Qwen-Image (dual-stream blocks, Qwen2.5-VL through a chat template whose opening the
pipeline drops, text trimmed to the batch's longest prompt): the twin's template, sites in the
order hooks fire, the text arguments the transformer receives, padding that changes nothing, a
swap that fits the call and the altered prompt to one length and leaves a negative prompt's
call alone, an attack's given states read with their mask, neuron activations over each
prompt's own rows, planted windows found in full and fast mode, the adapter through
``QwenImagePipeline``'s own ``load_lora_weights`` equal to the merged checkpoint, ComfyUI's key
map, the published layout with the example recipe planned on it, and the twin recipe built and
audited."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locopack.edit.activations import projection_activations
from locopack.hooks.feed import feeding
from locopack.hooks.joint import swap_windows
from locopack.localize import Rung, Sweep, plan_sweep
from locopack.localize.windows import PromptPair
from locopack.models import detect_family, get_family, load_pipeline
from locopack.recipe import parse_recipe

from .family_checks import (
    ROOT,
    adapter_equals_merged,
    cli_run,
    listed_sites_fire_in_order,
    planted_text_window_is_found,
    real_layout,
    recipe,
    twin_recipe_builds_and_audits,
)
from .test_models_dit import REAL_LAYOUTS

PROMPT = "a painting of a dog in the style of van gogh"
SHORT = "a red car"
SIZE = {"height": 16, "width": 16}
#: text rows of the tests (the pipeline's default, 512, only costs time here)
LENGTH = 24


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return get_family("qwen-image").save_twin(tmp_path_factory.mktemp("qwen") / "twin", seed=0)


@pytest.fixture(scope="module")
def qwen_pipe(qwen_dir):
    pipe, family = load_pipeline(str(qwen_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe, family.with_t5_length(LENGTH)


def _generate(pipe, family, prompt, n=1, steps=2, output_type="pil", **extra):
    return pipe(
        prompt,
        num_images_per_prompt=n,
        num_inference_steps=steps,
        guidance_scale=3.0,
        generator=[
            torch.Generator().manual_seed(0)
            for _ in range(n * (len(prompt) if isinstance(prompt, list) else 1))
        ],
        output_type=output_type,
        **SIZE,
        **family.call_kwargs(),
        **extra,
    ).images


def _calls(pipe, run, module: str = "") -> list[dict]:
    """The keyword arguments of every call of the transformer (or of its ``module``) while
    ``run`` runs."""
    calls = []
    handle = pipe.transformer.get_submodule(module).register_forward_pre_hook(
        lambda _m, _a, kwargs: calls.append(kwargs), with_kwargs=True
    )
    try:
        run()
    finally:
        handle.remove()
    return calls


def test_the_twin_is_detected_and_its_template_opening_is_what_the_pipeline_drops(
    qwen_dir, qwen_pipe
):
    pipe, family = qwen_pipe
    assert detect_family(pipe) is get_family("qwen-image") and family.name == "qwen-image"
    rebuilt = get_family("qwen-image").build_twin(seed=0).transformer.state_dict()
    loaded = pipe.transformer.state_dict()
    assert (
        all(torch.equal(rebuilt[k], loaded[k]) for k in rebuilt) and rebuilt.keys() == loaded.keys()
    )
    template = pipe.prompt_template_encode
    opening = template[: template.index("{}")]
    assert len(pipe.tokenizer(opening).input_ids) == pipe.prompt_template_encode_start_idx == 34
    # the states the transformer gets are the encoder's last hidden states of the whole
    # templated prompt, its first 34 rows dropped
    (call,) = _calls(pipe, lambda: _generate(pipe, family, PROMPT, steps=1))
    ids = pipe.tokenizer(template.format(PROMPT), return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(call["encoder_hidden_states"], hidden[:, 34:], rtol=0, atol=0)


def test_layers_lists_the_sites_in_the_order_their_hooks_fire(qwen_dir, qwen_pipe):
    pipe, family = qwen_pipe
    listed = listed_sites_fire_in_order(
        qwen_dir, pipe, lambda: _generate(pipe, family, PROMPT, steps=1)
    )
    assert listed["family"] == "qwen-image" and not listed["pooled_text_path"]
    assert [s["path"] for s in listed["sites"]] == [
        f"transformer_blocks.{i}.attn" for i in range(3)
    ]
    assert all(s["text_only"] for s in listed["sites"])


def test_text_arguments_are_the_call_s_padded_to_one_length_under_the_mask(qwen_pipe):
    pipe, family = qwen_pipe
    (call,) = _calls(pipe, lambda: _generate(pipe, family, [PROMPT, SHORT], steps=1))
    with torch.no_grad():
        text = family.text_arguments(pipe, [PROMPT, SHORT])
    assert sorted(text) == ["encoder_hidden_states", "encoder_hidden_states_mask"]
    states, mask = text["encoder_hidden_states"], text["encoder_hidden_states_mask"]
    assert states.shape[:2] == mask.shape == (2, LENGTH)
    # the prompt, then the template's closing <|im_end|> \n <|im_start|> assistant \n
    lengths = [len(pipe.tokenizer(p).input_ids) + 5 for p in (PROMPT, SHORT)]
    assert mask.sum(1).tolist() == lengths
    width = call["encoder_hidden_states"].shape[1]
    assert width == max(lengths)  # the pipeline trims to the longest prompt
    torch.testing.assert_close(states[:, :width], call["encoder_hidden_states"], rtol=0, atol=0)
    torch.testing.assert_close(mask[:, :width], call["encoder_hidden_states_mask"], rtol=0, atol=0)
    assert not states[:, width:].any() and not mask[:, width:].any()
    # one prompt alone: the pipeline passes no mask; encode pads it all the same
    torch.testing.assert_close(family.encode(pipe, [SHORT])[0], states[1], rtol=0, atol=1e-5)
    positions = family.concept_positions(pipe, PROMPT, "van gogh")
    ids = pipe.tokenizer(PROMPT).input_ids
    assert pipe.tokenizer.decode([ids[i] for i in positions]).replace(" ", "") == "vangogh"
    assert family.last_token_position(pipe, PROMPT) == len(ids) - 1  # before <|im_end|>


@torch.no_grad()
def test_padding_under_the_mask_changes_nothing(qwen_pipe):
    """The premise of fitting a call and the altered prompt to one length."""
    pipe, family = qwen_pipe
    (call,) = _calls(pipe, lambda: _generate(pipe, family, SHORT, steps=1))
    assert call["encoder_hidden_states_mask"] is None
    plain = pipe.transformer(**call)[0]
    states = call["encoder_hidden_states"]
    padded = torch.cat([states, torch.randn(1, 7, states.shape[2])], dim=1)
    mask = torch.tensor([[1] * states.shape[1] + [0] * 7])
    moved = pipe.transformer(
        **{**call, "encoder_hidden_states": padded, "encoder_hidden_states_mask": mask}
    )[0]
    torch.testing.assert_close(moved, plain, rtol=0, atol=1e-6)
    unmasked = pipe.transformer(**{**call, "encoder_hidden_states": padded})[0]
    assert (unmasked - plain).abs().max() > 1e-4  # the mask is what keeps them out


def test_the_swap_fits_lengths_and_nothing_moves_without_a_change(qwen_pipe):
    pipe, family = qwen_pipe
    rung = Rung(2, 3.0, (0,), 16)
    for prompt in (PROMPT, SHORT):
        same = Sweep(pipe, family, [PromptPair(prompt, prompt, prompt, 1)], None)
        assert same.pooled_window is None  # no pooled path to swap alone
        paths = same.site_paths
        plain = _generate(pipe, family, prompt, n=3)
        swapped = same._images(0, [[], paths, paths[1:]], 0, rung)
        for image, reference in zip(swapped, plain, strict=True):
            np.testing.assert_array_equal(np.asarray(image), np.asarray(reference))
    # an altered prompt longer than the original: the call is padded to its length, and
    # the window's sites read the altered stream's keys and values
    longer = Sweep(pipe, family, [PromptPair(SHORT, PROMPT, SHORT, 1)], None)
    run = lambda: longer._images(0, [paths[1:2]], 0, Rung(1, 3.0, (0,), 16))  # noqa: E731
    alongside, real = _calls(pipe, run, "transformer_blocks.0")  # as the blocks get them
    length = len(pipe.tokenizer(PROMPT).input_ids) + 5
    assert real["encoder_hidden_states"].shape[1] == length
    kept = len(pipe.tokenizer(SHORT).input_ids) + 5
    assert real["encoder_hidden_states_mask"].tolist() == [
        [True] * kept + [False] * (length - kept)
    ]
    assert alongside["encoder_hidden_states_mask"].all()
    shorter = Sweep(pipe, family, [PromptPair(PROMPT, SHORT, PROMPT, 1)], None)
    plain = _generate(pipe, family, PROMPT, output_type="np")
    moved = shorter._images(0, [paths[1:2]], 0, rung)
    assert np.abs(np.asarray(moved[0], float) / 255 - plain[0]).max() > 1e-3


@torch.no_grad()
def test_a_negative_prompt_s_call_is_left_alone(qwen_pipe):
    """With a negative prompt and ``true_cfg_scale`` the pipeline calls the transformer apart
    for it; the swap alters the conditional call only."""
    pipe, family = qwen_pipe
    paths = [s.path for s in family.sites(pipe.transformer)]
    texts = [family._encoded(pipe, [p]) for p in (PROMPT, SHORT)]
    (original, original_mask), (altered, altered_mask) = texts
    guided = {"negative_prompt": "a photo", "true_cfg_scale": 4.0}
    outputs = []
    handle = pipe.transformer.register_forward_hook(lambda _m, _a, out: outputs.append(out[0]))
    try:
        swap = swap_windows(
            family, pipe.transformer, [paths[:2]], original[0], altered[0],
            original_mask[0], altered_mask[0],
        )  # fmt: skip
        with swap:
            _generate(pipe, family, PROMPT, steps=1, **guided)
        _generate(pipe, family, PROMPT, steps=1, **guided)
    finally:
        handle.remove()
    # calls: alongside, conditional, negative (swapped run); conditional, negative (plain)
    assert len(outputs) == 5
    torch.testing.assert_close(outputs[2], outputs[4], rtol=0, atol=0)
    assert (outputs[1] - outputs[3]).abs().max() > 1e-4


@torch.no_grad()
def test_given_states_are_read_as_the_prompt_they_encode(qwen_pipe):
    """An attack's states (``encode``'s, padded under no mask) fed to a call of another
    length give that call the output of the prompt they encode."""
    pipe, family = qwen_pipe
    outputs = {}
    for prompt in (PROMPT, SHORT):
        (call,) = _calls(pipe, lambda p=prompt: _generate(pipe, family, p, steps=1))
        outputs[prompt] = (call, pipe.transformer(**call)[0])
    for given, into in ((PROMPT, SHORT), (SHORT, PROMPT), (SHORT, SHORT)):
        states, _ = family.given_text(pipe, [given])
        call = outputs[into][0]
        with feeding(family, pipe.transformer, states):
            fed = pipe.transformer(**call)[0]
        torch.testing.assert_close(fed, outputs[given][1], rtol=0, atol=1e-5)


@torch.no_grad()
def test_neuron_activations_are_the_means_over_each_prompt_s_own_rows(qwen_pipe):
    """At one probe (seed 0, first step): the mean of what a site's key projection emits in
    the pipeline's first call over each prompt's unmasked rows, however many padded rows
    the text has."""
    pipe, family = qwen_pipe
    text = (ROOT / "recipes" / "twin" / "qwen-image-erase-van-gogh.yaml").read_text()
    recipe = parse_recipe(text.replace("timesteps: [0.0, 1.0]", "timesteps: [0.0]"), "r.yaml")
    site, prompts, seen = family.sites(pipe.transformer)[1], [PROMPT, SHORT], []
    handle = pipe.transformer.get_submodule(site.key).register_forward_hook(
        lambda _m, _i, out: seen.append(out)
    )
    settings = recipe.localize

    def run():
        pipe(
            prompt=prompts,
            num_inference_steps=settings.steps,
            guidance_scale=settings.guidance,
            generator=[torch.Generator().manual_seed(0) for _ in prompts],
            height=16,
            width=16,
            output_type="latent",
            **family.call_kwargs(),
        )

    try:
        call = _calls(pipe, run)[0]
    finally:
        handle.remove()
    kept = call["encoder_hidden_states_mask"].float().unsqueeze(-1)
    expected = (seen[0] * kept).sum(1) / kept.sum(1)
    found = projection_activations(pipe, family, prompts, [site.path], "key", recipe)
    torch.testing.assert_close(found[site.key], expected, rtol=1e-4, atol=1e-5)
    assert (found[site.key] - seen[0].mean(1)).abs().max() > 1e-3  # the short one's padding


@pytest.mark.slow
@pytest.mark.parametrize(("start", "mode"), [(0, "full"), (4, "full"), (2, "fast")])
def test_a_planted_single_site_window_is_found(start, mode, qwen_dir):
    base = get_family("qwen-image").with_t5_length(LENGTH)
    family = type(base.__name__, (base,), {"twin_layers": 6})
    planted_text_window_is_found(family, qwen_dir, start, mode)


def _denoise(transformer):
    gen = torch.Generator().manual_seed(0)
    return transformer(
        hidden_states=torch.randn(2, 16, transformer.config.in_channels, generator=gen),
        timestep=torch.tensor([0.5, 0.5]),
        encoder_hidden_states=torch.randn(2, 12, 32, generator=gen),
        encoder_hidden_states_mask=torch.tensor([[1] * 12, [1] * 9 + [0] * 3]),
        img_shapes=[[(1, 4, 4)]] * 2,
        return_dict=False,
    )[0]


def test_the_adapter_loaded_by_qwen_image_pipeline_equals_the_merged_checkpoint(qwen_dir, tmp_path):
    family = get_family("qwen-image").with_t5_length(LENGTH)
    sites = [s.path for s in family.sites(load_pipeline(str(qwen_dir))[0].transformer)]
    adapter_equals_merged(qwen_dir, tmp_path, family, sites[1:3], recipe(qwen_dir), _denoise)
    # ComfyUI (comfy/lora.py, model_lora_keys_unet, its QwenImage branch) maps
    # "transformer.<key>" to its weight "diffusion_model.<key>.weight": its Qwen-Image model
    # keeps diffusers' module names, so each A/B pair lands on the projection it was made for
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    transformer = load_pipeline(str(qwen_dir))[0].transformer
    placed = {}
    for key, tensor in tensors.items():
        stem, _, kind = key.rpartition(".lora_")
        module = transformer.get_submodule(stem.removeprefix("transformer."))
        width = module.out_features if kind == "B.weight" else module.in_features
        assert stem.startswith("transformer.") and kind in ("A.weight", "B.weight"), key
        assert tensor.shape[0 if kind == "B.weight" else 1] == width, key
        placed.setdefault(stem.removeprefix("transformer."), set()).add(kind)
    modules = [f"{p}.{m}" for p in sites[1:3] for m in ("add_k_proj", "add_v_proj")]
    assert placed == dict.fromkeys(modules, {"A.weight", "B.weight"})


def test_the_real_layout_has_60_text_only_sites_and_the_example_is_planned_on_it(tmp_path):
    family, denoiser = real_layout(tmp_path / "model", *REAL_LAYOUTS["Qwen/Qwen-Image"])
    sites = family.sites(denoiser)
    assert family.name == "qwen-image" and len(sites) == 60
    assert all(s.text_only for s in sites) and sites[-1].path == "transformer_blocks.59.attn"
    assert {(s.in_features, s.out_features) for s in sites} == {(3072, 3072)}
    # the example recipe, its model the published configs without weights: one pass per
    # image and step (no CFG), twice where a window is swapped
    text = (ROOT / "recipes" / "examples" / "qwen-image-remove-van-gogh.yaml").read_text()
    (tmp_path / "r.yaml").write_text(text.replace("Qwen/Qwen-Image", str(tmp_path / "model")))
    printed = cli_run("localize", "--plan", str(tmp_path / "r.yaml"))
    planned = plan_sweep(parse_recipe(text, "r.yaml"), family, 60)
    assert f"full: {planned.full_passes:,} denoiser passes\n" in printed
    assert f" fast: {planned.mode_passes:,} denoiser passes at most" in printed
    assert plan_sweep(parse_recipe(text, "r.yaml"), family.with_t5_length(64), 60) == planned


@pytest.mark.slow
def test_the_twin_recipe_builds_and_audits_with_a_full_reproduction(tmp_path):
    release = twin_recipe_builds_and_audits(
        tmp_path, "qwen-image", "qwen-image-erase-van-gogh.yaml"
    )
    card = (release / "README.md").read_text()
    assert "no pooled text vector" in card and "pooled_projections" not in card
