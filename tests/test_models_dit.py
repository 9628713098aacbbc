"""The joint-attention families (SD3/SD3.5, FLUX.1, FLUX.2): detection, sites, encoding, twins."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from locopack.errors import ModelLayoutError
from locopack.models import (
    detect_family,
    family_for,
    get_family,
    load_denoiser_layout,
    load_pipeline,
    model_layout,
)

NAMES = ("sd3", "flux", "flux2")
PROMPT = "a painting of a dog in the style of van gogh"
#: the resolution twins run at (FLUX's pipeline default is 256 px for them)
SIZE = {"height": 16, "width": 16}

# The published configs of the two reference models, as on the Hub (model_index.json and
# transformer/config.json of stabilityai/stable-diffusion-3.5-medium and
# black-forest-labs/FLUX.1-schnell); the transformer values agree with the copies in several
# public repositories that build these models without downloading them.
REAL_LAYOUTS = {
    "stabilityai/stable-diffusion-3.5-medium": (
        "StableDiffusion3Pipeline",
        {
            "_class_name": "SD3Transformer2DModel",
            "attention_head_dim": 64,
            "caption_projection_dim": 1536,
            "dual_attention_layers": list(range(13)),
            "in_channels": 16,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 24,
            "out_channels": 16,
            "patch_size": 2,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 384,
            "qk_norm": "rms_norm",
            "sample_size": 128,
        },
    ),
    "black-forest-labs/FLUX.1-schnell": (
        "FluxPipeline",
        {
            "_class_name": "FluxTransformer2DModel",
            "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56],
            "guidance_embeds": False,
            "in_channels": 64,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 19,
            "num_single_layers": 38,
            "patch_size": 1,
            "pooled_projection_dim": 768,
        },
    ),
    # black-forest-labs/FLUX.2-dev (model_index.json and transformer/config.json)
    "black-forest-labs/FLUX.2-dev": (
        "Flux2Pipeline",
        {
            "_class_name": "Flux2Transformer2DModel",
            "attention_head_dim": 128,
            "axes_dims_rope": [32, 32, 32, 32],
            "eps": 1e-06,
            "guidance_embeds": True,
            "in_channels": 128,
            "joint_attention_dim": 15360,
            "mlp_ratio": 3.0,
            "num_attention_heads": 48,
            "num_layers": 8,
            "num_single_layers": 48,
            "out_channels": None,
            "patch_size": 1,
            "rope_theta": 2000,
            "timestep_guidance_channels": 256,
        },
    ),
    # Tongyi-MAI/Z-Image-Turbo (model_index.json and transformer/config.json)
    "Tongyi-MAI/Z-Image-Turbo": (
        "ZImagePipeline",
        {
            "_class_name": "ZImageTransformer2DModel",
            "all_f_patch_size": [1],
            "all_patch_size": [2],
            "axes_dims": [32, 48, 48],
            "axes_lens": [1536, 512, 512],
            "cap_feat_dim": 2560,
            "dim": 3840,
            "in_channels": 16,
            "n_heads": 30,
            "n_kv_heads": 30,
            "n_layers": 30,
            "n_refiner_layers": 2,
            "norm_eps": 1e-05,
            "qk_norm": True,
            "rope_theta": 256.0,
            "t_scale": 1000.0,
        },
    ),
    # Alpha-VLLM/Lumina-Image-2.0 (model_index.json and transformer/config.json)
    "Alpha-VLLM/Lumina-Image-2.0": (
        "Lumina2Pipeline",
        {
            "_class_name": "Lumina2Transformer2DModel",
            "axes_dim_rope": [32, 32, 32],
            "axes_lens": [300, 512, 512],
            "cap_feat_dim": 2304,
            "ffn_dim_multiplier": None,
            "hidden_size": 2304,
            "in_channels": 16,
            "multiple_of": 256,
            "norm_eps": 1e-05,
            "num_attention_heads": 24,
            "num_kv_heads": 8,
            "num_layers": 26,
            "num_refiner_layers": 2,
            "out_channels": None,
            "patch_size": 2,
            "sample_size": 128,
            "scaling_factor": 1.0,
        },
    ),
    # lodestones/Chroma1-HD (diffusers' defaults are its values)
    "lodestones/Chroma1-HD": (
        "ChromaPipeline",
        {
            "_class_name": "ChromaTransformer2DModel",
            "approximator_hidden_dim": 5120,
            "approximator_layers": 5,
            "approximator_num_channels": 64,
            "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56],
            "in_channels": 64,
            "joint_attention_dim": 4096,
            "num_attention_heads": 24,
            "num_layers": 19,
            "num_single_layers": 38,
            "patch_size": 1,
        },
    ),
    # Qwen/Qwen-Image (diffusers' defaults are its values: 60 dual-stream blocks of 24 heads
    # of 128, Qwen2.5-VL-7B's 3584-wide states)
    "Qwen/Qwen-Image": (
        "QwenImagePipeline",
        {
            "_class_name": "QwenImageTransformer2DModel",
            "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56],
            "guidance_embeds": False,
            "in_channels": 64,
            "joint_attention_dim": 3584,
            "num_attention_heads": 24,
            "num_layers": 60,
            "out_channels": 16,
            "patch_size": 2,
        },
    ),
    # Efficient-Large-Model/Sana_1600M_1024px_diffusers (diffusers' defaults are its values)
    "Efficient-Large-Model/Sana_1600M_1024px_diffusers": (
        "SanaPipeline",
        {
            "_class_name": "SanaTransformer2DModel",
            "attention_bias": False,
            "attention_head_dim": 32,
            "caption_channels": 2304,
            "cross_attention_dim": 2240,
            "cross_attention_head_dim": 112,
            "in_channels": 32,
            "mlp_ratio": 2.5,
            "norm_elementwise_affine": False,
            "norm_eps": 1e-06,
            "num_attention_heads": 70,
            "num_cross_attention_heads": 20,
            "num_layers": 20,
            "out_channels": 32,
            "patch_size": 1,
            "sample_size": 32,
        },
    ),
}


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dit_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-twins")
    return {name: get_family(name).save_twin(root / name, seed=0) for name in NAMES}


@pytest.fixture(scope="module")
def dit_pipes(dit_dirs):
    return {name: load_pipeline(str(path)) for name, path in dit_dirs.items()}


def _generate(pipe, family, prompt, seed=0, steps=1, guidance=1.0):
    return pipe(
        prompt=prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
        **SIZE,
        **family.call_kwargs(),
    ).images


@pytest.mark.parametrize("name", NAMES)
def test_twin_loads_back_through_locopack_and_is_detected(name, dit_dirs, dit_pipes):
    pipe, family = dit_pipes[name]
    assert family is get_family(name) and detect_family(pipe) is family
    assert model_layout(str(dit_dirs[name]))[0] is family
    first, again = _generate(pipe, family, PROMPT), _generate(pipe, family, PROMPT)
    assert first.shape == (1, 16, 16, 3)
    assert (first == again).all()
    assert abs(first - _generate(pipe, family, PROMPT, seed=1)).max() > 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_twin_is_reproducible_from_its_seed(name, dit_dirs):
    family = get_family(name)
    rebuilt = family.build_twin(seed=0).transformer.state_dict()
    loaded = load_pipeline(str(dit_dirs[name]))[0].transformer.state_dict()
    assert rebuilt.keys() == loaded.keys()
    assert all(torch.equal(rebuilt[k], loaded[k]) for k in rebuilt)


def test_detection_by_pipeline_class():
    assert family_for("StableDiffusion3Pipeline", {}).name == "sd3"
    assert family_for("FluxPipeline", {}).name == "flux"
    assert family_for("Flux2Pipeline", {}).name == "flux2"
    with pytest.raises(ModelLayoutError, match="FLUX.1"):
        family_for("FluxKontextPipeline", {})


@pytest.mark.parametrize("name", NAMES)
def test_sites_are_listed_in_hook_firing_order(name, dit_pipes):
    pipe, family = dit_pipes[name]
    sites = family.sites(pipe.transformer)
    assert len(sites) == {"sd3": 5, "flux": 6, "flux2": 3}[name]
    fired: list[str] = []
    handles = [
        pipe.transformer.get_submodule(module).register_forward_hook(
            lambda _m, _i, _o, module=module: fired.append(module)
        )
        for site in sites
        for module in (site.key, site.value)
    ]
    try:
        _generate(pipe, family, PROMPT)
    finally:
        for handle in handles:
            handle.remove()
    assert fired == [m for site in sites for m in (site.key, site.value)]
    assert [s.text_only for s in sites] == [not s.path.startswith("single") for s in sites]


@pytest.mark.parametrize("name", NAMES)
def test_encode_returns_the_transformer_text_input_and_pooled_vector(name, dit_pipes):
    pipe, family = dit_pipes[name]
    seen = {}

    def capture(_module, _args, kwargs):
        seen.setdefault("states", kwargs["encoder_hidden_states"].clone())
        seen.setdefault("pooled", kwargs.get("pooled_projections"))

    handle = pipe.transformer.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        _generate(pipe, family, PROMPT)
    finally:
        handle.remove()
    with torch.no_grad():
        states, pooled = family.encode_with_pooled(pipe, [PROMPT])
    assert states.shape[1] == family.max_length(pipe)
    torch.testing.assert_close(seen["states"], states, rtol=0, atol=0)
    if family.has_pooled_text_path:
        torch.testing.assert_close(seen["pooled"], pooled, rtol=0, atol=0)
    else:  # FLUX.2: no pooled vector reaches the transformer, and none is encoded
        assert seen["pooled"] is None and pooled is None
    with pytest.raises(ModelLayoutError, match="collected with hooks"):
        family.site_states(pipe.transformer, family.sites(pipe.transformer)[0], states)


@pytest.mark.parametrize("name", NAMES)
def test_t5_length_is_settable(name, dit_pipes):
    pipe, family = dit_pipes[name]
    short = family.with_t5_length(12)
    assert short.name == family.name and short.call_kwargs()["max_sequence_length"] == 12
    assert family.call_kwargs()["max_sequence_length"] == family.t5_length
    clip = pipe.tokenizer.model_max_length if name == "sd3" else 0
    assert short.encode(pipe, [PROMPT]).shape[1] == clip + 12 == short.max_length(pipe)


@pytest.mark.parametrize("name", NAMES)
def test_the_recipe_sets_the_t5_length_of_the_loaded_base(name, dit_dirs, tmp_path):
    from locopack.pipeline.base import load_base
    from locopack.recipe import parse_recipe

    text = (ROOT / "recipes" / "twin" / f"{name}-erase-van-gogh.yaml").read_text()
    text = re.sub(r"\n  max_sequence_length:.*", "", text)  # the FLUX.2 twin recipe sets one
    text = text.replace(f"./out/tiny-{name}/scorer", str(dit_dirs[name] / "scorer"))
    text = text.replace(f"./out/tiny-{name}", str(dit_dirs[name]))
    recipe = parse_recipe(text.replace("base:\n", "base:\n  max_sequence_length: 9\n"), "r.yaml")
    base = load_base(recipe)
    assert base.family.t5_length == 9 and base.family.call_kwargs()["max_sequence_length"] == 9
    with pytest.raises(ModelLayoutError, match="base.max_sequence_length"):
        get_family("sd1").with_t5_length(9)  # a family without T5 says which field to remove


@pytest.mark.parametrize("name", NAMES)
def test_concept_positions_cover_the_concept_in_every_text_part(name, dit_pipes):
    pipe, family = dit_pipes[name]
    positions = family.concept_positions(pipe, PROMPT, "van gogh")
    clip_length = pipe.tokenizer.model_max_length
    if name == "flux":
        parts = [(pipe.tokenizer_2, positions, PROMPT)]
    if name == "sd3":
        parts = [
            (pipe.tokenizer, [p for p in positions if p < clip_length], PROMPT),
            (pipe.tokenizer_3, [p - clip_length for p in positions if p >= clip_length], PROMPT),
        ]
    if name == "flux2":  # the prompt inside the pipeline's chat messages, system message first
        from diffusers.pipelines.flux2.pipeline_flux2 import format_input

        (messages,) = format_input([PROMPT], system_message=pipe.system_message)
        templated = pipe.tokenizer.apply_chat_template(messages, tokenize=False)
        assert templated.index(pipe.system_message) < templated.index(PROMPT)
        parts = [(pipe.tokenizer, positions, templated)]
    for tokenizer, found, text in parts:
        assert found
        ids = tokenizer(text).input_ids
        assert tokenizer.decode([ids[i] for i in found]).replace(" ", "") == "vangogh"


@pytest.mark.parametrize("name", NAMES)
def test_layout_is_read_from_configs_only(name, dit_dirs):
    family, denoiser = load_denoiser_layout(str(dit_dirs[name]))
    assert family is get_family(name)
    assert next(denoiser.parameters()).device.type == "meta"
    assert [s.path for s in family.sites(denoiser)] == [
        s.path for s in family.sites(load_pipeline(str(dit_dirs[name]))[0].transformer)
    ]


@pytest.mark.parametrize(
    "model, name, count, width, single",
    [
        ("stabilityai/stable-diffusion-3.5-medium", "sd3", 24, 1536, 0),
        ("black-forest-labs/FLUX.1-schnell", "flux", 57, 3072, 38),
        ("black-forest-labs/FLUX.2-dev", "flux2", 8, 6144, 0),
    ],
)
def test_real_layouts_on_the_meta_device(model, name, count, width, single, tmp_path):
    pipeline_class, config = REAL_LAYOUTS[model]
    (tmp_path / "transformer").mkdir()
    index = {"_class_name": pipeline_class, "transformer": ["diffusers", config["_class_name"]]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(config))
    family, denoiser = load_denoiser_layout(str(tmp_path))
    sites = family.sites(denoiser)
    assert family.name == name and len(sites) == count
    assert {(s.in_features, s.out_features) for s in sites} == {(width, width)}
    assert sum(not s.text_only for s in sites) == single
    assert sites[-1].path == (
        "single_transformer_blocks.37.attn" if single else f"transformer_blocks.{count - 1}.attn"
    )


def test_flux2_fused_single_blocks_are_refused_with_their_reason(dit_dirs, tmp_path):
    """A FLUX.2 recipe that names a single-stream block stops before anything is written,
    with one line that says why (the fused projection), even with allow_image_sites."""
    from click.testing import CliRunner

    from locopack.cli import cli

    text = (ROOT / "recipes" / "twin" / "flux2-erase-van-gogh.yaml").read_text()
    text = text.replace("  scorer: ./out/tiny-flux2/scorer\n", "")  # the layers skip the sweep
    text = text.replace("./out/tiny-flux2", str(dit_dirs["flux2"]))
    layers = "  layers: [single_transformer_blocks.0.attn]\n"
    text = text.replace("  mode: full\n", "  mode: full\n" + layers)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text + "  allow_image_sites: true\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["--threads", "1", "build", str(recipe), "--out", str(out)])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {recipe}:")
    assert "localize.layers[0]: expected a site module path of this model, found" in line
    assert "to_qkv_mlp_proj" in line and "transformer_blocks.*" in line
    assert not out.exists()
    # the same on the command line, with the recipe naming no layers
    recipe.write_text(text.replace(layers, ""))
    ask = ["edit", str(recipe), "--layers", "single_transformer_blocks.1.attn", "--out", str(out)]
    result = CliRunner().invoke(cli, ["--threads", "1", *ask])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: --layers: 'single_transformer_blocks.1.attn' is not a site: ")
    assert "to_qkv_mlp_proj" in line
    assert not (out / "delta.safetensors").exists()
    assert get_family("flux").not_a_site_reason("single_transformer_blocks.0.attn") == ""
