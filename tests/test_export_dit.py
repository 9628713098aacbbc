"""Exports of joint-attention edits (SD3, FLUX.1, FLUX.2): the adapter as the family's own diffusers
pipeline and ``locopack.apply`` load it equals the merged checkpoint, and ComfyUI's key maps
place every one of its keys."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

import locopack
from locopack.edit import compute_delta
from locopack.export import write_adapter, write_merged
from locopack.models import LoadedBase, get_family, load_denoiser_layout, load_pipeline

from .test_edit_dit import FAMILIES, _recipe
from .test_models_dit import REAL_LAYOUTS

ENERGY = 0.99999999


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """{family: (twin folder, release folder, delta)}: two double-stream sites edited, and
    for FLUX also a single-stream one (opted in)."""
    root = tmp_path_factory.mktemp("dit-export")
    out = {}
    for name in ("sd3", "flux", "flux2"):
        twin = get_family(name).save_twin(root / name, seed=0)
        pipe, _ = load_pipeline(str(twin))
        family = FAMILIES[name] if name == "flux2" else get_family(name)  # a 64-token text
        pipe.set_progress_bar_config(disable=True)
        sites = [s.path for s in family.sites(pipe.transformer)]
        chosen, extra = sites[1:3], ""
        if name == "flux":
            chosen, extra = sites[1:4], ", allow_image_sites: true"
        delta = compute_delta(LoadedBase(pipe, family), _recipe(name, extra), chosen)
        folder = root / f"release-{name}"
        folder.mkdir()
        write_adapter(delta, folder, max_rank=64, energy=ENERGY)
        write_merged(LoadedBase(pipe, family), delta, folder / "merged")
        out[name] = (twin, folder, delta)
    return out


def _denoise(pipe):
    """One transformer call on seeded inputs of the twin's shapes."""
    transformer = pipe.transformer
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(2, 20, transformer.config.joint_attention_dim, generator=gen)
    extra = {}
    if "pooled_projection_dim" in transformer.config:  # not FLUX.2
        pooled = torch.randn(2, transformer.config.pooled_projection_dim, generator=gen)
        extra["pooled_projections"] = pooled
    if "axes_dims_rope" in transformer.config:  # FLUX: packed latents and RoPE position ids
        axes = len(transformer.config.axes_dims_rope)  # 3 in FLUX.1, 4 in FLUX.2
        sample = torch.randn(2, 16, transformer.config.in_channels, generator=gen)
        extra["txt_ids"] = torch.zeros(20, axes)
        extra["img_ids"] = torch.randn(16, axes, generator=gen)
        if transformer.config.get("guidance_embeds"):  # the FLUX.2 twin; FLUX.1's is schnell
            extra["guidance"] = torch.tensor([4.0, 4.0])
        timestep = torch.tensor([0.5, 0.5])
    else:
        size = transformer.config.sample_size
        sample = torch.randn(2, transformer.config.in_channels, size, size, generator=gen)
        timestep = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        return transformer(
            hidden_states=sample,
            timestep=timestep,
            encoder_hidden_states=states,
            return_dict=False,
            **extra,
        )[0]


def check_adapter_equals_merged(name, twin, folder, denoise, changed: float = 1e-3) -> None:
    """The adapter in ``folder`` loaded by the family's own pipeline (``load_lora_weights``)
    and by ``locopack.apply`` gives ``denoise``'s outputs of the merged checkpoint within
    1e-5, and the edit moves them by more than ``changed``."""
    with_adapter = DiffusionPipeline.from_pretrained(str(twin))
    assert type(with_adapter).__name__ == get_family(name).pipeline_classes[0]
    with_adapter.load_lora_weights(str(folder))  # plain diffusers, as a user would
    applied, _ = load_pipeline(str(twin))
    assert locopack.apply(applied, folder).kind == "adapter"
    merged = DiffusionPipeline.from_pretrained(str(folder / "merged"))
    base = DiffusionPipeline.from_pretrained(str(twin))
    a, p, m, b = (denoise(x) for x in (with_adapter, applied, merged, base))
    assert (a - m).abs().max() <= 1e-5  # measured 3e-7
    assert (p - m).abs().max() <= 1e-5
    assert (m - b).abs().max() > changed  # the edit does change the outputs


@pytest.mark.parametrize("name", ["sd3", "flux", "flux2"])
def test_adapter_loaded_by_the_family_pipeline_equals_the_merged_checkpoint(name, releases):
    twin, folder, _ = releases[name]
    check_adapter_equals_merged(name, twin, folder, _denoise)


# ComfyUI's LoRA key maps for these models, written from its source (comfyanonymous/ComfyUI,
# comfy/lora.py: model_lora_keys_unet maps "transformer.<diffusers key>" through
# comfy/utils.py: flux_to_diffusers / mmdit_to_diffusers; load_lora reads "<x>.lora_B.weight"
# as up, "<x>.lora_A.weight" as down and an optional "<x>.alpha").  Only the attention
# projections are written out: {"transformer.<module>": (native weight, row offset, rows)}.
def comfy_attention_map(name: str, config: dict) -> dict[str, tuple[str, int, int]]:
    out = {}
    if name in ("flux", "flux2"):  # ComfyUI's Flux2 model subclasses its Flux one
        hidden = config["num_attention_heads"] * config["attention_head_dim"]
        for i in range(config["num_layers"]):
            for stream, prefix in (("img_attn", "to_"), ("txt_attn", "add_")):
                for j, which in enumerate("qkv"):
                    module = f"{prefix}{which}" if stream == "img_attn" else f"add_{which}_proj"
                    native = f"diffusion_model.double_blocks.{i}.{stream}.qkv.weight"
                    out[f"transformer.transformer_blocks.{i}.attn.{module}"] = (
                        native,
                        j * hidden,
                        hidden,
                    )
        for i in range(config["num_single_layers"]):
            native = f"diffusion_model.single_blocks.{i}.linear1.weight"
            for j, which in enumerate("qkv"):
                out[f"transformer.single_transformer_blocks.{i}.attn.to_{which}"] = (
                    native,
                    j * hidden,
                    hidden,
                )
        return out
    depth = config["num_layers"]
    offset = depth * 64  # ComfyUI's width of an MMDiT of this depth
    for i in range(depth):
        for j, which in enumerate("qkv"):
            native = f"diffusion_model.joint_blocks.{i}.context_block.attn.qkv.weight"
            out[f"transformer.transformer_blocks.{i}.attn.add_{which}_proj"] = (
                native,
                j * offset,
                offset,
            )
    return out


def _comfy_loads(keys, key_map) -> dict[str, str]:
    """{file key: ComfyUI target} as ``load_lora`` consumes them; the keys it leaves are the
    ones it would warn about ("lora key not loaded")."""
    placed = {}
    for key in keys:
        for suffix in (".lora_B.weight", ".lora_A.weight", ".alpha"):
            stem = key.removesuffix(suffix)
            if stem != key and stem in key_map:
                placed[key] = key_map[stem][0]
    return placed


@pytest.mark.parametrize("name", ["sd3", "flux", "chroma", "flux2"])
def test_comfyui_maps_every_key_of_the_adapter_for_the_real_layouts(name, tmp_path):
    """Every site projection of SD3.5-medium / FLUX.1-schnell / Chroma1-HD, as the adapter
    names it, lands on a row block of ComfyUI's fused weight that is exactly as wide as the
    projection (ComfyUI's ``model_base.Chroma`` subclasses its ``Flux``: the same map)."""
    model = next(
        m for m, (cls, _) in REAL_LAYOUTS.items() if get_family(name).pipeline_classes[0] == cls
    )
    pipeline_class, config = REAL_LAYOUTS[model]
    (tmp_path / "transformer").mkdir()
    index = {"_class_name": pipeline_class, "transformer": ["diffusers", config["_class_name"]]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    (tmp_path / "transformer" / "config.json").write_text(json.dumps(config))
    family, denoiser = load_denoiser_layout(str(tmp_path))
    key_map = comfy_attention_map("flux" if name == "chroma" else name, config)
    modules = [m for site in family.sites(denoiser) for m in (site.key, site.value)]
    keys = [f"transformer.{m}.lora_{ab}.weight" for m in modules for ab in "AB"]
    placed = _comfy_loads(keys, key_map)
    assert sorted(placed) == sorted(keys)
    for module in modules:
        _, _, rows = key_map[f"transformer.{module}"]
        assert rows == denoiser.get_submodule(module).out_features
    assert len(modules) == {"sd3": 48, "flux": 114, "chroma": 114, "flux2": 16}[name]


def test_comfyui_patch_of_the_flux_adapter_gives_the_merged_weights(releases):
    """ComfyUI's patch (fused weight rows += up @ down, alpha absent: scale 1) of the twin's
    fused weights, compared row block by row block with the merged checkpoint."""
    twin, folder, delta = releases["flux"]
    tensors = load_file(folder / "pytorch_lora_weights.safetensors")
    base = DiffusionPipeline.from_pretrained(str(twin)).transformer
    merged = DiffusionPipeline.from_pretrained(str(folder / "merged")).transformer
    key_map = comfy_attention_map("flux", dict(base.config))
    placed = _comfy_loads(tensors, key_map)
    assert sorted(placed) == sorted(tensors)
    assert any(m.startswith("single_transformer_blocks") for m in delta.deltas)
    for module in delta.deltas:
        _, _, rows = key_map[f"transformer.{module}"]
        up, down = (
            tensors[f"transformer.{module}.lora_B.weight"],
            tensors[f"transformer.{module}.lora_A.weight"],
        )
        assert up.shape[0] == rows
        patched = base.get_submodule(module).weight + up @ down
        torch.testing.assert_close(patched, merged.get_submodule(module).weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["sd3", "flux", "flux2"])
def test_export_refuses_a_format_the_family_lacks_before_writing_anything(
    name, releases, tmp_path, monkeypatch
):
    from click.testing import CliRunner

    import locopack.models
    from locopack.cli import cli

    _, _, delta = releases[name]
    delta.save(tmp_path / "delta.safetensors")

    def never(*args, **kwargs):
        raise AssertionError("the base is loaded only once every format is possible")

    monkeypatch.setattr(locopack.models, "load_pipeline", never)
    out = tmp_path / "out"
    ask = ["export", str(tmp_path / "delta.safetensors"), "--kohya", "--merged", "--onnx"]
    result = CliRunner().invoke(cli, [*ask, "--out", str(out)])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    family = get_family(name)
    assert line.startswith("error: kohya format: kohya LoRA files exist for Stable Diffusion")
    assert f"not for {family.pretty_name} ({name}); nothing was written" in line
    assert "export without kohya" in line
    assert not out.exists()


@pytest.mark.parametrize("name", ["sd3", "flux", "sdxl", "pixart"])
def test_the_onnx_docstring_states_each_family_kinds_real_inputs(name):
    from locopack.export import onnx
    from locopack.export.onnx_tracing import trace_spec
    from locopack.models.text_sites import JOINT_ATTENTION

    family = get_family(name)
    inputs = list(trace_spec(LoadedBase(family.build_twin(0), family)).inputs)
    bullets = onnx.__doc__.split("\n* ")
    joint = family.text_sites is JOINT_ATTENTION
    kind = "Joint attention" if joint else "PixArt" if name == "pixart" else "UNet"
    (bullet,) = [b for b in bullets if b.startswith(kind)]
    shared = ("sample", "timestep", "encoder_hidden_states")  # PixArt's bullet: "the UNet's three"
    assert all(f"``{i}``" in bullet for i in inputs if name != "pixart" or i not in shared)
    assert joint == ("pooled_projections" in inputs)
    assert f"<out_dir>/{family.denoiser_attr}/model.onnx" in onnx.__doc__


def test_flux2_onnx_is_refused_in_one_line_before_anything_is_written(releases, tmp_path):
    from click.testing import CliRunner

    from locopack.cli import cli

    _, _, delta = releases["flux2"]
    delta.save(tmp_path / "delta.safetensors")
    out = tmp_path / "out"
    ask = ["export", str(tmp_path / "delta.safetensors"), "--onnx", "--out", str(out)]
    result = CliRunner().invoke(cli, ask)
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("error: onnx format: no ONNX export for FLUX.2")
    assert "4-axis position ids" in line and "nothing was written" in line
    assert not out.exists()
