"""The single-stream families with a text refiner (Z-Image, Lumina-2): sites, encoding, the swap,
planted windows, the site-by-site edit, the adapter through the family's own pipeline, and
ComfyUI's key map for the real layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import locopack
from locopack.edit import compute_delta
from locopack.edit.closed_form import EditSystem
from locopack.errors import ExportError, ModelLayoutError
from locopack.export import write_adapter, write_merged
from locopack.localize import Rung, Sweep, localize, prompt_pairs
from locopack.localize.planted import ReferenceScorer, plant_window
from locopack.localize.windows import PromptPair
from locopack.models import (
    LoadedBase,
    detect_family,
    get_family,
    load_denoiser_layout,
    load_pipeline,
)
from locopack.models.text_refiner import prefix_io
from locopack.recipe import parse_recipe

from .test_export_dit import _comfy_loads, check_adapter_equals_merged
from .test_models_dit import REAL_LAYOUTS

NAMES = ("z-image", "lumina2")
PROMPT = "a painting of a dog in the style of van gogh"
#: Lumina-2's pipeline assumes a VAE scale factor of 8 and patches of 2: multiples of 16
SIZE = {"height": 32, "width": 32}
RECIPE = """
version: 1
name: refiner-edit
base: {{model: ./unused}}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting of a cat in the style of {{concept}}", "{{concept}} starry night"]
    target: ["a painting of a cat", "starry night"]
    preserve: ["a photo of a cat"]
localize: {{window: 1, steps: {steps}, guidance: 3.0, seeds: [0], prompts_per_edit: 2,
           scorer: ./unused, mode: {mode}, resolution: 32}}
edit: {{lambda: 0.1}}
"""


def _recipe(mode: str = "full"):
    steps = 5 if mode == "fast" else 2  # too few steps to screen at fewer
    return parse_recipe(RECIPE.format(steps=steps, mode=mode), "r.yaml")


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """{name: (twin folder, pipeline, family)}, saved and loaded back through locopack."""
    root = tmp_path_factory.mktemp("refiner-twins")
    found = {}
    for name in NAMES:
        folder = get_family(name).save_twin(root / name, seed=0)
        pipe, family = load_pipeline(str(folder))
        pipe.set_progress_bar_config(disable=True)
        found[name] = (folder, pipe, family)
    return found


def _generate(pipe, prompt, n=1, guidance=0.0, steps=1):
    return pipe(
        prompt,
        num_images_per_prompt=n,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=[torch.Generator().manual_seed(0) for _ in range(n)],
        output_type="pil",
        **SIZE,
    ).images


@pytest.mark.parametrize("name", NAMES)
def test_twin_is_detected_and_reproducible(name, twins):
    folder, pipe, family = twins[name]
    assert family is get_family(name) and detect_family(pipe) is family
    rebuilt = family.build_twin(seed=0).transformer.state_dict()
    loaded = pipe.transformer.state_dict()
    assert rebuilt.keys() == loaded.keys()
    assert all(torch.equal(rebuilt[k], loaded[k]) for k in rebuilt)
    layout_family, denoiser = load_denoiser_layout(str(folder))
    assert layout_family is family
    assert [s.path for s in family.sites(denoiser)] == [
        s.path for s in family.sites(pipe.transformer)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_sites_are_listed_in_hook_firing_order_and_read_only_text(name, twins):
    _, pipe, family = twins[name]
    sites = family.sites(pipe.transformer)
    assert len(sites) == family.twin_layers[0] and all(s.text_only for s in sites)
    fired: list[str] = []
    modules = [m for site in sites for m in (site.key, site.value)]
    watched = modules + [f"{family.shared_blocks}.0.{family.attention_attr}.to_k"]
    handles = [
        pipe.transformer.get_submodule(m).register_forward_hook(
            lambda _m, _i, _o, m=m: fired.append(m)
        )
        for m in watched
    ]
    try:
        _generate(pipe, PROMPT)
    finally:
        for handle in handles:
            handle.remove()
    assert fired[: len(modules)] == modules  # the refiner runs before the joint stream
    assert fired[len(modules) :] == watched[-1:]


@pytest.mark.parametrize("name", NAMES)
def test_encode_returns_the_transformer_text_input(name, twins):
    _, pipe, family = twins[name]
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(family.call_texts(args, kwargs)), with_kwargs=True
    )
    prompts = [PROMPT, "a cat"]
    try:
        pipe(list(prompts), num_inference_steps=1, guidance_scale=0.0, output_type="latent", **SIZE)
    finally:
        handle.remove()
    states, mask = family.encode(pipe, prompts), family.attention_mask(pipe, prompts)
    for k, given in enumerate(seen[0]):
        torch.testing.assert_close(states[k][mask[k]], given, rtol=0, atol=0)
        assert len(given) == len(family.token_ids(pipe, prompts[k]))
    ids = family.token_ids(pipe, PROMPT)
    found = [
        pipe.tokenizer.convert_ids_to_tokens(ids[i])
        for i in family.concept_positions(pipe, PROMPT, "van gogh")
    ]
    assert found == ["van", "gogh"]
    with pytest.raises(ModelLayoutError, match="prefix"):
        family.site_states(pipe.transformer, family.sites(pipe.transformer)[0], states)


@pytest.mark.parametrize("name", NAMES)
def test_the_swap_reproduces_the_pipeline_and_moves_only_with_another_prompt(name, twins):
    _, pipe, family = twins[name]
    rung = Rung(2, 3.0, (0,), SIZE["height"])
    prompt = "a painting of a cat in the style of van gogh"
    same = Sweep(pipe, family, [PromptPair(prompt, prompt, prompt, 1)], None)
    paths = same.site_paths
    windows = [[], paths, paths[1:2]]
    plain = _generate(pipe, prompt, len(windows), guidance=3.0, steps=2)
    for image, reference in zip(same._images(0, windows, 0, rung), plain, strict=True):
        np.testing.assert_array_equal(np.asarray(image), np.asarray(reference))
    other = Sweep(pipe, family, [PromptPair(prompt, "a photo of a red car", prompt, 1)], None)
    moved = other._images(0, [[], paths[:1]], 0, rung)
    np.testing.assert_array_equal(np.asarray(moved[0]), np.asarray(plain[0]))
    assert np.abs(np.asarray(moved[1], float) - np.asarray(plain[0], float)).max() > 0
    long = "a painting of a cat " + "with a dog " * 10
    longer = Sweep(pipe, family, [PromptPair(prompt, long, prompt, 1)], None)
    if family.masks_text:  # the altered prompt's mask goes with its keys and values
        moved = longer._images(0, [paths[:1]], 0, rung)
        assert np.abs(np.asarray(moved[0], float) - np.asarray(plain[0], float)).max() > 0
    else:
        with pytest.raises(ModelLayoutError, match="same padded length"):
            longer._images(0, [paths[:1]], 0, rung)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "start", "mode"),
    [
        ("z-image", 0, "full"),
        ("z-image", 6, "fast"),
        ("z-image", 8, "full"),
        ("lumina2", 1, "fast"),
        ("lumina2", 7, "full"),
    ],
)
def test_planted_single_site_windows_are_found(name, start, mode):
    base = get_family(name)
    family = type(base.__name__, (base,), {"twin_layers": (9, 2)})  # 9 sites: fast mode races
    pipe = family.build_twin(seed=0)
    pipe.set_progress_bar_config(disable=True)
    paths = plant_window(pipe, family, start, 1)  # every other site reads no text
    recipe = _recipe(mode)
    settings = recipe.localize
    scorer = ReferenceScorer(
        pipe,
        family,
        [p.original for p in prompt_pairs(recipe)],
        steps=settings.steps,
        guidance=settings.guidance,
        resolutions=(settings.resolution,),
    )
    result = localize(LoadedBase(pipe, family), recipe, scorer=scorer, progress=False, batch=9)
    assert result.mode == mode and result.chosen == start
    assert result.layers == paths[start : start + 1]
    assert result.candidates[start].mean < -0.02
    for candidate in result.candidates:  # sites that read no text draw the reference (up
        if candidate.window != result.layers:  # to batched arithmetic: Lumina-2 ~3e-4)
            assert abs(candidate.mean) <= 0.005, candidate.window


@pytest.mark.parametrize("name", NAMES)
def test_the_edit_solves_sites_in_order_on_inputs_after_the_edits_upstream(name, twins):
    _, pipe, family = twins[name]
    recipe = _recipe()
    sites = family.sites(pipe.transformer)[:2]
    delta = compute_delta(LoadedBase(pipe, family), recipe, [s.path for s in sites])
    prompts = recipe.edits[0]
    originals = family.encode_texts(pipe, prompts.originals())
    targets = family.encode_texts(pipe, prompts.targets_expanded())
    preserve = family.encode_texts(pipe, ["a photo of a cat"])
    concept = [family.concept_positions(pipe, p, "van gogh") for p in prompts.originals()]
    assert delta.provenance.columns >= sum(len(c) for c in concept)
    first = {sites[0].key: delta.deltas[sites[0].key], sites[0].value: delta.deltas[sites[0].value]}
    with locopack.delta.WeightDelta(first).applied(pipe.transformer):
        x = prefix_io(family, pipe.transformer, originals, [sites[1].key])[sites[1].key]
        p = prefix_io(family, pipe.transformer, preserve, [sites[1].key])[sites[1].key][0]
    y = prefix_io(family, pipe.transformer, targets, [sites[1].key])[sites[1].key]
    # the edit's own token pairs: concept tokens against the target's, and the last token
    from locopack.edit.tokens import edit_prompts

    chosen = edit_prompts(pipe, family, recipe)
    xs = torch.stack([x[k][i] for k, i, _ in chosen.pairs], 1).double()
    ys = torch.stack([y[k][j] for k, _, j in chosen.pairs], 1).double()
    ps = p[: len(family.token_ids(pipe, "a photo of a cat"))].T.double()
    weight = pipe.transformer.get_submodule(sites[1].value).weight
    system = EditSystem.build(xs, ys, 0.1, ps, recipe.edit.preserve_weight)
    expected = system.delta(weight).float()
    torch.testing.assert_close(delta.deltas[sites[1].value], expected, rtol=1e-4, atol=1e-6)
    assert (delta.deltas[sites[1].value]).abs().max() > 1e-3


@pytest.fixture(scope="module")
def releases(twins, tmp_path_factory):
    root = tmp_path_factory.mktemp("refiner-export")
    out = {}
    for name, (folder, pipe, family) in twins.items():
        sites = [s.path for s in family.sites(pipe.transformer)]
        delta = compute_delta(LoadedBase(pipe, family), _recipe(), sites[1:])
        release = root / name
        release.mkdir()
        write_adapter(delta, release, max_rank=64, energy=0.99999999)
        write_merged(LoadedBase(pipe, family), delta, release / "merged")
        out[name] = (folder, release, delta)
    return out


def _denoise(pipe):
    """One transformer call on seeded inputs of the twin's shapes (Z-Image takes lists of
    per-sample tensors, Lumina-2 padded text and its mask)."""
    gen = torch.Generator().manual_seed(0)
    config = pipe.transformer.config
    latents = torch.randn(2, config.in_channels, 4, 4, generator=gen)
    texts = torch.randn(2, 12, config.cap_feat_dim, generator=gen)
    with torch.no_grad():
        if type(pipe).__name__ == "ZImagePipeline":
            inputs = ([x.unsqueeze(1) for x in latents], torch.tensor([0.3, 0.7]))
            out = pipe.transformer(*inputs, [texts[0, :7], texts[1]], return_dict=False)[0]
            return torch.stack(out)
        mask = torch.ones(2, 12, dtype=torch.bool)
        mask[0, 7:] = False
        return pipe.transformer(
            hidden_states=latents,
            timestep=torch.tensor([0.3, 0.7]),
            encoder_hidden_states=texts,
            encoder_attention_mask=mask,
            return_dict=False,
        )[0]


@pytest.mark.parametrize("name", NAMES)
def test_adapter_loaded_by_the_family_pipeline_equals_the_merged_checkpoint(name, releases):
    twin, folder, _ = releases[name]
    check_adapter_equals_merged(name, twin, folder, _denoise, changed=1e-4)


# ComfyUI's map for Z-Image (comfyanonymous/ComfyUI, comfy/lora.py: model_lora_keys_unet maps
# "transformer.<diffusers key>" of a Lumina2-type model through comfy/utils.py:
# z_image_to_diffusers, which places each refiner and main block's to_q/to_k/to_v on row
# blocks of its fused attention.qkv): {"transformer.<module>": (native weight, offset, rows)}.
def comfy_z_image_map(config: dict) -> dict[str, tuple[str, int, int]]:
    dim, out = config["dim"], {}
    blocks = [f"layers.{i}" for i in range(config["n_layers"])]
    blocks += [
        f"{kind}.{i}"
        for kind in ("context_refiner", "noise_refiner")
        for i in range(config["n_refiner_layers"])
    ]
    for block in blocks:
        for j, which in enumerate("qkv"):
            native = f"diffusion_model.{block}.attention.qkv.weight"
            out[f"transformer.{block}.attention.to_{which}"] = (native, j * dim, dim)
    return out


def test_comfyui_maps_every_key_of_the_adapter_for_the_real_layout(tmp_path):
    pipeline_class, config = REAL_LAYOUTS["Tongyi-MAI/Z-Image-Turbo"]
    (tmp_path / "transformer").mkdir()
    index = {"_class_name": pipeline_class, "transformer": ["diffusers", config["_class_name"]]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(config))
    family, denoiser = load_denoiser_layout(str(tmp_path))
    modules = [m for site in family.sites(denoiser) for m in (site.key, site.value)]
    keys = [f"transformer.{m}.lora_{ab}.weight" for m in modules for ab in "AB"]
    key_map = comfy_z_image_map(config)
    assert sorted(_comfy_loads(keys, key_map)) == sorted(keys)
    for module in modules:
        assert key_map[f"transformer.{module}"][2] == denoiser.get_submodule(module).out_features
    assert len(modules) == 4  # two refiner blocks, key and value


@pytest.mark.parametrize("name", NAMES)
def test_onnx_is_refused_in_one_line_before_anything_is_written(name, releases, tmp_path):
    from locopack.export.formats import ExportChoice

    with pytest.raises(
        ExportError, match=r"^onnx format: no ONNX export for .*nothing was written"
    ):
        ExportChoice(("adapter", "onnx")).check(get_family(name))


@pytest.mark.parametrize("name", NAMES)
def test_neuron_activations_are_what_the_refiner_emits_in_the_pipeline(name, twins):
    """The mean activation of a refiner site is the mean, over the prompt's padded text rows,
    of what its value projection emits in the pipeline's own transformer call."""
    from locopack.edit.activations import projection_activations

    _, pipe, family = twins[name]
    site = family.sites(pipe.transformer)[1]
    prompts = [PROMPT, "a photo of a cat"]
    seen = []
    hook = pipe.transformer.get_submodule(site.value).register_forward_hook(
        lambda _m, _i, out: seen.append(out)
    )
    try:
        pipe(list(prompts), num_inference_steps=1, guidance_scale=0.0, output_type="latent", **SIZE)
    finally:
        hook.remove()
    rows = family.text_rows([len(t) for t in family.encode_texts(pipe, prompts)])
    expected = torch.stack([seen[0][k, :n].mean(dim=0) for k, n in enumerate(rows)])
    found = projection_activations(pipe, family, prompts, [site.path], "value")
    torch.testing.assert_close(found[site.value], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_layers_cli_lists_the_sites_in_firing_order_with_their_kind(name, twins):
    from click.testing import CliRunner

    from locopack.cli import cli

    folder, pipe, family = twins[name]
    listed = json.loads(CliRunner().invoke(cli, ["layers", str(folder), "--json"]).output)
    assert listed["family"] == name and not listed["pooled_text_path"]
    fired: list[str] = []
    handles = [
        pipe.transformer.get_submodule(site["key"]).register_forward_hook(
            lambda _m, _i, _o, path=site["path"]: fired.append(path)
        )
        for site in listed["sites"]
    ]
    try:
        _generate(pipe, PROMPT)
    finally:
        for handle in handles:
            handle.remove()
    assert fired == [site["path"] for site in listed["sites"]]
    assert {site["kind"] for site in listed["sites"]} == {"text-only"}
    table = CliRunner().invoke(cli, ["layers", str(folder)]).output
    assert table.count(", text-only") == len(fired)
    assert f"shared with image rows) and {family.input_projection} are not sites" in table


def test_comfyui_leaves_lumina2_refiner_keys_unmapped(tmp_path):
    """ComfyUI maps diffusers keys of its Lumina-2 type models through z_image_to_diffusers,
    which names the refiner's attention ``attention``; Lumina-2's diffusers modules are
    ``attn``, so an adapter of its refiner sites does not load there (the README says so)."""
    family = get_family("lumina2")
    denoiser = family.build_twin(0).transformer
    modules = [m for site in family.sites(denoiser) for m in (site.key, site.value)]
    keys = [f"transformer.{m}.lora_{ab}.weight" for m in modules for ab in "AB"]
    config = {"dim": 32, "n_layers": 2, "n_refiner_layers": family.twin_layers[0]}
    assert _comfy_loads(keys, comfy_z_image_map(config)) == {}
