"""Model families: detection, site order, encoding, token positions, tiny twins."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from diffusers import DiffusionPipeline

from locopack.cli import cli
from locopack.errors import ModelLayoutError
from locopack.models import FAMILIES, detect_family, get_family, model_layout

from .conftest import FAMILY_NAMES

EXPECTED_SITES = {"sd1": 16, "sd2": 16, "sdxl": 17, "if": 7, "pixart": 4}


def _generate(pipe, family, prompt, seed, guidance=2.0, steps=2):
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        output_type="np",
        **family.call_kwargs(),
    ).images


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_twin_loads_with_diffusers_and_generates(name, twin_dirs):
    pipe = DiffusionPipeline.from_pretrained(str(twin_dirs[name]))
    pipe.set_progress_bar_config(disable=True)
    family = get_family(name)
    assert detect_family(pipe) is family
    first = _generate(pipe, family, "a photo of a cat", seed=1)
    again = _generate(pipe, family, "a photo of a cat", seed=1)
    other = _generate(pipe, family, "a photo of a cat", seed=2)
    assert first.ndim == 4 and first.shape[0] == 1 and first.shape[-1] == 3
    assert np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-3


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_twin_is_reproducible_from_its_seed(name, tmp_path, twin_dirs):
    from safetensors.torch import load_file

    family = get_family(name)
    family.save_twin(tmp_path / "again", seed=0)
    attr = family.denoiser_attr
    (weights,) = (twin_dirs[name] / attr).glob("*.safetensors")
    a, b = load_file(weights), load_file(tmp_path / "again" / attr / weights.name)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_layers_cli_lists_sites_in_hook_firing_order(name, twin_dirs, twin_pipes):
    result = CliRunner().invoke(cli, ["layers", str(twin_dirs[name]), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert listed["family"] == name
    assert len(listed["sites"]) == EXPECTED_SITES[name]

    pipe, family = twin_pipes[name]
    denoiser = getattr(pipe, family.denoiser_attr)
    fired: list[str] = []
    handles = [
        denoiser.get_submodule(site["key"]).register_forward_hook(
            lambda _m, _i, _o, path=site["path"]: fired.append(path)
        )
        for site in listed["sites"]
    ]
    try:
        _generate(pipe, family, "a cat", seed=0, guidance=1.0, steps=1)
    finally:
        for handle in handles:
            handle.remove()
    assert fired == [site["path"] for site in listed["sites"]]
    for site in listed["sites"]:
        key = denoiser.get_submodule(site["key"])
        assert (key.in_features, key.out_features) == (site["in_features"], site["out_features"])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_encode_returns_exactly_what_sites_consume(name, twin_pipes):
    pipe, family = twin_pipes[name]
    denoiser = getattr(pipe, family.denoiser_attr)
    sites = family.sites(denoiser)
    seen: dict[str, torch.Tensor] = {}

    def capture(module, args, path):
        seen.setdefault(path, args[0].detach().clone())

    handles = [
        denoiser.get_submodule(s.key).register_forward_pre_hook(
            lambda m, a, path=s.path: capture(m, a, path)
        )
        for s in sites
    ]
    prompt = "a painting of a dog in the style of van gogh"
    try:
        _generate(pipe, family, prompt, seed=0, guidance=1.0, steps=1)
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        states = family.encode(pipe, [prompt])
    assert states.shape[-1] == sites[0].in_features
    for s in sites:
        expected = family.site_states(denoiser, s, states)
        torch.testing.assert_close(seen[s.path], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_concept_positions_cover_the_concept_tokens(name, twin_pipes):
    pipe, family = twin_pipes[name]
    tokenizer = family.tokenizer(pipe)
    prompt = "a painting of a dog in the style of Van Gogh"
    positions = family.concept_positions(pipe, prompt, "van gogh")
    ids = family.token_ids(pipe, prompt)
    decoded = tokenizer.decode([ids[i] for i in positions]).replace(" ", "").lower()
    assert decoded == "vangogh"
    last = family.last_token_position(pipe, prompt)
    assert last == positions[-1]
    assert family.content_positions(pipe, prompt)[-1] == len(ids) - 1
    with pytest.raises(ModelLayoutError, match="does not occur"):
        family.concept_positions(pipe, prompt, "monet")


def test_unsupported_pipeline_lists_the_supported_ones(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "KandinskyPipeline", "unet": ["diffusers", "X"]})
    )
    (tmp_path / "unet" / "config.json").write_text("{}")
    with pytest.raises(ModelLayoutError) as err:
        model_layout(str(tmp_path))
    message = str(err.value)
    assert "KandinskyPipeline" in message
    for family in FAMILIES.values():
        assert family.pretty_name in message


@pytest.mark.parametrize(
    "argument, expected",
    [("no/such/thing", "neither a local folder nor a Hub id"), (".", "model_index.json")],
)
def test_layers_cli_bad_model_is_one_clear_line(argument, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["layers", argument])
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output


def test_sd2_is_told_apart_from_sd1_by_its_config(twin_dirs):
    assert model_layout(str(twin_dirs["sd1"]))[0].name == "sd1"
    assert model_layout(str(twin_dirs["sd2"]))[0].name == "sd2"


@pytest.mark.parametrize("build", ["clip", "t5"])
def test_twin_tokenizers_keep_every_twin_word_whole_and_spell_the_rest(build, tmp_path):
    from transformers import AutoTokenizer

    from locopack.models.tokenizers import TWIN_WORDS, tiny_clip_tokenizer, tiny_t5_tokenizer

    tokenizer = tiny_clip_tokenizer() if build == "clip" else tiny_t5_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for word in TWIN_WORDS:
        assert len(reloaded(word, add_special_tokens=False).input_ids) == 1, word
    spelled = reloaded("zebra", add_special_tokens=False).input_ids
    assert len(spelled) > 1 and reloaded.unk_token_id not in spelled
    assert reloaded.decode(spelled).replace(" ", "") == "zebra"
