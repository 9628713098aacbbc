"""Exports: the adapter as diffusers loads it equals the merged checkpoint; kohya; refusals."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

import locopack
from locopack.edit import compute_delta
from locopack.errors import EditError, ExportError, ModelLayoutError
from locopack.export import write_adapter, write_kohya, write_merged
from locopack.models import LoadedBase, get_family, load_pipeline
from locopack.recipe import parse_recipe
from locopack.storage import load_tensors, save_tensors

from .conftest import FAMILY_NAMES

RECIPE = """
version: 1
name: export-test
base: {model: ./x}
edits:
  - kind: erase
    attribute: object
    concept: cat
    prompts: ["a photo of a cat", "a cat on a street", "a painting of a cat"]
    target: "a photo of a dog"
edit: {lambda: 0.05, tokens: concept}
"""


def _delta(pipe, family, n_sites=3):
    sites = [s.path for s in family.sites(getattr(pipe, family.denoiser_attr))]
    return compute_delta(
        LoadedBase(pipe, family), parse_recipe(RECIPE, "r.yaml"), sites[1 : 1 + n_sites]
    )


def _denoise(pipe, family, seed=0):
    denoiser = getattr(pipe, family.denoiser_attr)
    torch.manual_seed(seed)
    config = denoiser.config
    width = (
        config.get("caption_channels")
        or config.get("encoder_hid_dim")
        or config.cross_attention_dim
    )
    states = torch.randn(2, 77, width)  # raw text states, as the pipeline passes them
    channels = denoiser.config.in_channels
    size = denoiser.config.sample_size
    sample = torch.randn(2, channels, size, size)
    extra = {}
    if family.name == "sdxl":
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, 32),
            "time_ids": torch.randn(2, 6),
        }
    if family.name == "pixart":
        extra["added_cond_kwargs"] = {"resolution": None, "aspect_ratio": None}
    with torch.no_grad():
        return denoiser(
            sample, timestep=torch.tensor([500, 500]), encoder_hidden_states=states, **extra
        ).sample


@pytest.fixture(scope="module")
def releases(tmp_path_factory, twin_dirs):
    """{family: (release folder, delta)} with adapter, kohya (where possible) and merged."""
    out = {}
    for name in FAMILY_NAMES:
        pipe, family = load_pipeline(str(twin_dirs[name]))
        delta = _delta(pipe, family)
        folder = tmp_path_factory.mktemp(f"release-{name}")
        write_adapter(delta, folder, max_rank=64, energy=0.99999999)
        write_merged(LoadedBase(pipe, family), delta, folder / "merged")
        out[name] = (folder, delta)
    return out


@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl", "if"])
def test_adapter_loaded_by_diffusers_equals_the_merged_checkpoint(name, releases, twin_dirs):
    folder, _ = releases[name]
    family = get_family(name)
    with_adapter = DiffusionPipeline.from_pretrained(str(twin_dirs[name]))
    with_adapter.load_lora_weights(str(folder))  # plain diffusers, as a user would
    merged = DiffusionPipeline.from_pretrained(str(folder / "merged"))
    base = DiffusionPipeline.from_pretrained(str(twin_dirs[name]))
    a, m, b = (_denoise(p, family) for p in (with_adapter, merged, base))
    assert (a - m).abs().max() <= 1e-5
    assert (m - b).abs().max() > 1e-4  # the edit does change the outputs


def test_pixart_adapter_through_peft_equals_the_merged_checkpoint(releases, twin_dirs):
    folder, _ = releases["pixart"]
    family = get_family("pixart")
    pipe, _ = load_pipeline(str(twin_dirs["pixart"]))
    assert not hasattr(pipe, "load_lora_weights")  # diffusers has no PixArt LoRA loader
    applied = locopack.apply(pipe, folder)
    merged = DiffusionPipeline.from_pretrained(str(folder / "merged"))
    assert applied.kind == "adapter"
    assert (_denoise(pipe, family) - _denoise(merged, family)).abs().max() <= 1e-5


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_manifest_records_exact_low_rank_factors(name, releases):
    folder, delta = releases[name]
    manifest = json.loads((folder / "lora_manifest.json").read_text())
    columns = delta.provenance.columns
    tensors = load_file(folder / "pytorch_lora_weights.safetensors")
    for path, entry in manifest["modules"].items():
        assert entry["relative_error"] <= 1e-4
        assert entry["rank"] <= columns
        up = tensors[f"{delta.denoiser}.{path}.lora_B.weight"].double()
        down = tensors[f"{delta.denoiser}.{path}.lora_A.weight"].double()
        d = delta.deltas[path].double()
        assert (up @ down - d).norm() / d.norm() == pytest.approx(entry["relative_error"], abs=1e-6)


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_kohya_file_read_by_diffusers_gives_the_same_weights(name, releases, tmp_path):
    folder, delta = releases[name]
    kohya = write_kohya(delta, tmp_path, max_rank=64, energy=0.99999999)
    pipeline_class = type(DiffusionPipeline.from_pretrained(str(folder / "merged")))
    converted, alphas = pipeline_class.lora_state_dict(str(kohya))
    for path in delta.deltas:
        stem = path.rsplit(".", 1)
        key = f"unet.{stem[0]}.processor.{stem[1]}_lora"
        down = converted[f"{key}.down.weight"].double()
        up = converted[f"{key}.up.weight"].double()
        scale = alphas[f"{key}.down.weight.alpha"] / down.shape[0] if alphas else 1.0
        adapter = load_file(folder / "pytorch_lora_weights.safetensors")
        ours = (
            adapter[f"unet.{path}.lora_B.weight"].double()
            @ adapter[f"unet.{path}.lora_A.weight"].double()
        )
        assert (scale * up @ down - ours).abs().max() <= 1e-6


def test_kohya_is_refused_for_transformer_families(releases, tmp_path):
    _, delta = releases["pixart"]
    with pytest.raises(ExportError, match="Stable Diffusion UNets only"):
        write_kohya(delta, tmp_path, 64, 0.99999999)
    assert not list(tmp_path.iterdir())


def test_merged_checkpoint_changes_only_the_edited_tensors(releases, twin_dirs):
    folder, delta = releases["sd1"]
    base = load_file(next((twin_dirs["sd1"] / "unet").glob("*.safetensors")))
    merged = load_file(next((folder / "merged" / "unet").glob("*.safetensors")))
    edited = {f"{p}.weight" for p in delta.deltas}
    assert base.keys() == merged.keys()
    for key in base:
        same = torch.equal(base[key], merged[key])
        assert same != (key in edited), key
        assert merged[key].dtype == base[key].dtype
    for part in ("text_encoder", "vae"):
        (a,) = (twin_dirs["sd1"] / part).glob("*.safetensors")
        (b,) = (folder / "merged" / part).glob("*.safetensors")
        assert a.read_bytes() == b.read_bytes() or all(
            torch.equal(x, y)
            for x, y in zip(load_file(a).values(), load_file(b).values(), strict=True)
        )


def test_merged_keeps_the_base_dtype_and_leaves_the_pipeline_unchanged(tmp_path, twin_dirs):
    pipe, family = load_pipeline(str(twin_dirs["sd1"]), dtype="float16")
    delta = _delta(pipe, family, n_sites=1)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    write_merged(LoadedBase(pipe, family), delta, tmp_path / "merged")
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    (weights,) = (tmp_path / "merged" / "unet").glob("*.safetensors")
    assert {t.dtype for t in load_file(weights).values()} == {torch.float16}


def test_a_crash_while_merging_leaves_no_folder(tmp_path, twin_dirs, monkeypatch):
    pipe, family = load_pipeline(str(twin_dirs["sd1"]))
    delta = _delta(pipe, family, n_sites=1)
    weight = pipe.unet.get_submodule(next(iter(delta.deltas))).weight.clone()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipe, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        write_merged(LoadedBase(pipe, family), delta, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert not [p for p in tmp_path.iterdir()]  # no temporary leftovers either
    assert torch.equal(pipe.unet.get_submodule(next(iter(delta.deltas))).weight, weight)


def test_apply_refuses_another_base_unless_forced(releases, tmp_path):
    folder, _ = releases["sd1"]
    other_dir = get_family("sd1").save_twin(tmp_path / "other", seed=1)
    other, _ = load_pipeline(str(other_dir))
    with pytest.raises(EditError, match="made for another base model"):
        locopack.apply(other, folder)
    assert locopack.apply(other, folder, force=True).kind == "adapter"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_an_adapter_made_in_float32_applies_to_the_base_in_half_precision(
    dtype, releases, tmp_path, twin_dirs
):
    folder, _ = releases["sd1"]
    pipe, _ = load_pipeline(str(twin_dirs["sd1"]), dtype=dtype)
    assert locopack.apply(pipe, folder).kind == "adapter"
    other_dir = get_family("sd1").save_twin(tmp_path / "other", seed=1)
    other, _ = load_pipeline(str(other_dir), dtype=dtype)
    with pytest.raises(EditError, match="made for another base model"):
        locopack.apply(other, folder)


def test_damaged_adapter_and_pickle_weights_give_clear_errors(releases, tmp_path, twin_dirs):
    folder, _ = releases["sd1"]
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = (folder / "pytorch_lora_weights.safetensors").read_bytes()
    (damaged / "pytorch_lora_weights.safetensors").write_bytes(data[: len(data) // 2])
    pipe, _ = load_pipeline(str(twin_dirs["sd1"]))
    with pytest.raises(ExportError, match="truncated or corrupted"):
        locopack.apply(pipe, damaged)
    with pytest.raises(ExportError, match="no pytorch_lora_weights"):
        locopack.apply(pipe, tmp_path)
    tensors, metadata = load_tensors(folder / "pytorch_lora_weights.safetensors")
    for key in ("locopack", "lora_adapter_metadata"):
        save_tensors(
            tensors, damaged / "pytorch_lora_weights.safetensors", {**metadata, key: '{"a" 1}'}
        )
        with pytest.raises(ExportError, match=f"header entry '{key}' is not a JSON object"):
            locopack.apply(pipe, damaged)

    pickled = tmp_path / "pickled"
    get_family("sd1").build_twin(0).save_pretrained(str(pickled), safe_serialization=False)
    with pytest.raises(ModelLayoutError, match="safetensors"):
        load_pipeline(str(pickled))
    assert load_pipeline(str(pickled), allow_pickle=True)[1].name == "sd1"


def test_the_cli_reads_pickled_weights_only_when_allowed(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from locopack.cli import cli

    monkeypatch.setenv("LOCOPACK_ALLOW_PICKLE", "0")  # restored after the test
    pickled = tmp_path / "pickled"
    get_family("sd1").build_twin(0).save_pretrained(str(pickled), safe_serialization=False)
    ask = ["generate", "--model", str(pickled), "--prompt", "a cat", "--steps", "1", "--out"]
    refused = CliRunner().invoke(cli, [*ask, str(tmp_path / "a.png")])
    assert refused.exit_code == 1 and "locopack --allow-pickle" in refused.output
    assert not (tmp_path / "a.png").exists()
    allowed = CliRunner().invoke(cli, ["--allow-pickle", *ask, str(tmp_path / "b.png")])
    assert allowed.exit_code == 0, allowed.output
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_neuron_file_applies_through_locopack_apply(tmp_path, twin_dirs):
    from locopack.edit.activations import neuron_edit_for

    pipe, family = load_pipeline(str(twin_dirs["sd1"]))
    recipe = parse_recipe(
        RECIPE.replace(
            'target: "a photo of a dog"', 'target: "a photo of a dog"\n    preserve: ["a house"]'
        ),
        "r.yaml",
    )
    site = family.sites(pipe.unet)[6].path
    edit = neuron_edit_for(LoadedBase(pipe, family), recipe, [site], top_k=4)
    edit.save(tmp_path / "neurons.safetensors")
    before = _denoise(pipe, family)
    applied = locopack.apply(pipe, tmp_path)
    assert applied.kind == "neurons"
    after = _denoise(pipe, family)
    applied.remove()
    assert (after - before).abs().max() > 0
    assert torch.equal(_denoise(pipe, family), before)

    # made for this base: also in half precision; another base is refused
    half, _ = load_pipeline(str(twin_dirs["sd1"]), dtype="float16")
    assert locopack.apply(half, tmp_path).kind == "neurons"
    other, _ = load_pipeline(str(get_family("sd1").save_twin(tmp_path / "other", seed=1)))
    with pytest.raises(EditError, match="made for another base model"):
        locopack.apply(other, tmp_path / "neurons.safetensors")


@pytest.mark.parametrize("name", ["sd1", "pixart"])  # diffusers' loader; PEFT directly
def test_an_adapter_can_be_removed_and_applied_again(name, releases, twin_dirs):
    folder, _ = releases[name]
    family = get_family(name)
    pipe, _ = load_pipeline(str(twin_dirs[name]))
    denoiser = getattr(pipe, family.denoiser_attr)
    keys = set(denoiser.state_dict())
    base = _denoise(pipe, family)
    applied = locopack.apply(pipe, folder)
    edited = _denoise(pipe, family)
    assert (edited - base).abs().max() > 1e-4
    applied.remove()
    assert (_denoise(pipe, family) - base).abs().max() <= 1e-6
    assert set(denoiser.state_dict()) == keys  # no LoRA layer left behind
    locopack.apply(pipe, folder)
    assert (_denoise(pipe, family) - edited).abs().max() <= 1e-6


def test_modules_of_different_ranks_load_through_diffusers_and_max_rank_truncates(
    releases, twin_dirs, tmp_path
):
    from locopack.delta import WeightDelta

    _, delta = releases["sd1"]
    family = get_family("sd1")
    first = sorted(delta.deltas)[0]
    u, s, vh = torch.linalg.svd(delta.deltas[first].double(), full_matrices=False)
    deltas = {**delta.deltas, first: (s[0] * torch.outer(u[:, 0], vh[0])).float()}
    mixed = WeightDelta(deltas, delta.provenance)
    manifest = write_adapter(mixed, tmp_path / "mixed", max_rank=64, energy=0.99999999)
    assert manifest.modules[first].rank == 1
    assert len({m.rank for m in manifest.modules.values()}) > 1  # a rank_pattern
    with_adapter = DiffusionPipeline.from_pretrained(str(twin_dirs["sd1"]))
    with_adapter.load_lora_weights(str(tmp_path / "mixed"))
    base = DiffusionPipeline.from_pretrained(str(twin_dirs["sd1"]))
    with mixed.applied(base.unet):
        expected = _denoise(base, family)
    assert (_denoise(with_adapter, family) - expected).abs().max() <= 1e-5

    truncated = write_adapter(delta, tmp_path / "rank1", max_rank=1, energy=0.99999999)
    for path, entry in truncated.modules.items():
        values = torch.linalg.svdvals(delta.deltas[path].double())
        assert entry.rank == 1
        tail = float(values[1:].norm() / values.norm())
        assert entry.relative_error == pytest.approx(tail, rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("name", ["sd1", "pixart"])
def test_apply_at_half_strength_equals_half_the_delta(name, releases, twin_dirs):
    folder, delta = releases[name]
    family = get_family(name)
    pipe, _ = load_pipeline(str(twin_dirs[name]))
    base, _ = load_pipeline(str(twin_dirs[name]))
    locopack.apply(pipe, folder, scale=0.5)
    with delta.applied(getattr(base, family.denoiser_attr), scale=0.5):
        expected = _denoise(base, family)
    assert (_denoise(pipe, family) - expected).abs().max() <= 1e-5
    assert (_denoise(base, family) - expected).abs().max() > 1e-4


def test_export_command_writes_what_it_is_asked_and_checks_the_base(releases, tmp_path, twin_dirs):
    from click.testing import CliRunner

    from locopack.cli import cli

    _, delta = releases["sd1"]  # made on the sd1 twin, recorded as "./x"
    delta.save(tmp_path / "delta.safetensors")
    out = tmp_path / "out"
    ask = ["export", str(tmp_path / "delta.safetensors"), "--kohya", "--merged", "--out"]
    result = CliRunner().invoke(cli, [*ask, str(out), "--model", str(twin_dirs["sd1"])])
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {
        "pytorch_lora_weights.safetensors",
        "lora_manifest.json",
        "lora_kohya.safetensors",
        "merged",
        "cache",  # the folder's lock, held while writing; never part of a release
    }
    assert {p.name for p in (out / "cache").iterdir()} <= {".build.lock", ".build-holder"}
    merged, _ = load_pipeline(str(out / "merged"))
    base, family = load_pipeline(str(twin_dirs["sd1"]))
    with delta.applied(base.unet):
        assert (_denoise(merged, family) - _denoise(base, family)).abs().max() <= 1e-6

    other = get_family("sd1").save_twin(tmp_path / "other", seed=1)
    refused = CliRunner().invoke(cli, [*ask, str(tmp_path / "x"), "--model", str(other)])
    assert refused.exit_code == 1 and "made for another base model" in refused.output
    assert not (tmp_path / "x").exists()  # nothing written
    forced = ["--model", str(other), "--force"]
    assert CliRunner().invoke(cli, [*ask, str(tmp_path / "y"), *forced]).exit_code == 0
