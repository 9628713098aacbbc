"""LocoEdit on tiny twins: token rules, every family, the edited model moves as intended."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from locopack.cli import cli
from locopack.delta import WeightDelta
from locopack.edit import collect_states, compute_delta, edit_errors
from locopack.edit.tokens import align, edit_pairs
from locopack.errors import EditError, ExportError
from locopack.models import LoadedBase
from locopack.models.sd1 import StableDiffusion1
from locopack.recipe import parse_recipe

from .conftest import FAMILY_NAMES

RECIPE = """
version: 1
name: erase-van-gogh
base: {{model: {model}}}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting of a cat in the style of {{concept}}", "{{concept}} starry night",
              "a house by {{concept}}"]
    target: "a painting"
    preserve: ["a photo of a dog", "a painting by monet"]
  - kind: update
    fact: president of the united states
    prompts: ["the {{concept}}"]
    targets: ["joe biden"]
edit: {{lambda: {lam}, tokens: {tokens}, matrices: {matrices}}}
"""


def _recipe(model, tokens="last", lam=0.1, matrices="both", preserve=True):
    text = RECIPE.format(model=model, tokens=tokens, lam=lam, matrices=matrices)
    if not preserve:
        text = text.replace('    preserve: ["a photo of a dog", "a painting by monet"]\n', "")
    return parse_recipe(text, "edit.yaml")


def _sites(pipe, family):
    return [s.path for s in family.sites(getattr(pipe, family.denoiser_attr))]


def test_align_maps_equal_replaced_and_deleted_spans():
    #           a  painting  in  the  style  of  van  gogh  EOS
    original = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    target = [1, 2, 9]  # "a painting" EOS
    mapping = align(original, target)
    assert mapping[:2] == [0, 1] and mapping[-1] == 2
    assert all(m == 1 for m in mapping[2:8])  # deleted words map to the token before them
    assert align([1, 7, 8, 9], [1, 20, 9]) == [0, 1, 1, 2]  # replaced span, proportionally


@pytest.mark.parametrize("tokens", ["last", "concept", "all"])
def test_token_rules_pick_the_documented_positions(tokens, twin_pipes):
    pipe, family = twin_pipes["sd1"]
    original, target = "a painting in the style of van gogh", "a painting"
    pairs = edit_pairs(family, pipe, original, target, tokens, "van gogh")
    n_orig = len(family.token_ids(pipe, original))
    if tokens == "last":
        assert pairs == [(n_orig - 2, 2)]  # the token before end-of-text, in both
    elif tokens == "concept":
        assert [i for i, _ in pairs] == family.concept_positions(pipe, original, "van gogh")
    else:
        assert [i for i, _ in pairs] == list(range(n_orig))
        assert pairs[-1] == (n_orig - 1, 3)  # end-of-text to end-of-text


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("tokens", ["cover", "last", "concept", "all"])
def test_every_family_and_rule_lands_edits_on_their_targets(name, tokens, twin_pipes):
    pipe, family = twin_pipes[name]
    recipe = _recipe("./x", tokens=tokens, lam=1e-3, preserve=False)
    sites = _sites(pipe, family)[:2]
    delta = compute_delta(LoadedBase(pipe, family), recipe, sites)
    assert len(delta.deltas) == 4
    errors = edit_errors(LoadedBase(pipe, family), recipe, delta)
    for module, report in errors.items():
        # with more edit tokens than the twin's 24-64 state dims the system is overdetermined,
        # so the bound is relative to the mismatch before the edit
        bound = 0.02 if tokens != "all" else 0.5 * report["error_before"]
        assert report["edit_error"] < bound, (module, report)
    assert delta.provenance.tokens == tokens and delta.provenance.sites == sites


def test_matrices_setting_selects_key_value_or_both(twin_pipes):
    pipe, family = twin_pipes["sd1"]
    site = _sites(pipe, family)[4]
    for matrices, suffixes in (("key", {"to_k"}), ("value", {"to_v"}), ("both", {"to_k", "to_v"})):
        delta = compute_delta(LoadedBase(pipe, family), _recipe("./x", matrices=matrices), [site])
        assert {path.rsplit(".", 1)[1] for path in delta.deltas} == suffixes


def test_joint_solve_uses_every_edit_and_preserve_prompt(twin_pipes):
    pipe, family = twin_pipes["sdxl"]
    states = collect_states(pipe, family, _recipe("./x", tokens="last"))
    assert len(states.pairs) == 4  # three erase prompts and one update prompt
    assert states.preserve.shape[0] == 2 and len(states.preserve_at) == 2
    assert states.originals.shape[-1] == 64  # SD-XL: both encoders' states, concatenated


def _denoise(pipe, family, states):
    torch.manual_seed(0)
    latents = torch.randn(states.shape[0], 4, 16, 16)
    return pipe.unet(latents, 500, encoder_hidden_states=states).sample


class _WideTextSD1(StableDiffusion1):
    """The SD-1.x twin with 256-d text states: room for the edit's columns to be specific
    (the 32-d twin's state space is filled by a handful of prompts)."""

    text_hidden = 256


@torch.no_grad()
def test_edited_model_moves_originals_toward_targets_and_spares_others():
    family = _WideTextSD1
    pipe = family.build_twin(0)
    recipe = _recipe("./x", tokens="concept", lam=0.1)
    originals, targets = recipe.edits[0].originals(), recipe.edits[0].targets_expanded()
    unrelated = ["a photo of a red car", "a bird in the sky", "a mountain river"]
    enc = {
        k: family.encode(pipe, v)
        for k, v in (("orig", originals), ("target", targets), ("other", unrelated))
    }
    before = {k: _denoise(pipe, family, v) for k, v in enc.items()}
    delta = compute_delta(LoadedBase(pipe, family), recipe, _sites(pipe, family))
    delta.apply(pipe.unet)
    after = {k: _denoise(pipe, family, v) for k, v in enc.items()}

    # measured: the gap shrinks to 0.84 of what it was; unrelated prompts move 0.6x as much
    gap_before = (before["orig"] - before["target"]).norm()
    gap_after = (after["orig"] - before["target"]).norm()
    assert gap_after < 0.9 * gap_before, (gap_after, gap_before)
    moved_orig = (after["orig"] - before["orig"]).norm() / before["orig"].norm()
    moved_other = (after["other"] - before["other"]).norm() / before["other"].norm()
    assert moved_other < 0.75 * moved_orig, (moved_other, moved_orig)


def test_delta_round_trip_and_refusals(tmp_path, twin_pipes):
    pipe, family = twin_pipes["sd1"]
    delta = compute_delta(LoadedBase(pipe, family), _recipe("./x"), _sites(pipe, family)[:1])
    path = delta.save(tmp_path / "delta.safetensors")
    loaded = WeightDelta.load(path)
    assert loaded.sha256() == delta.sha256()
    assert loaded.provenance.to_json() == delta.provenance.to_json()
    assert loaded.provenance.base_fingerprint.startswith("sha256:")
    assert loaded.provenance.recipe_sha256 == _recipe("./x").sha256

    bad = {k: v.clone() for k, v in delta.deltas.items()}
    next(iter(bad.values()))[0, 0] = float("nan")
    with pytest.raises(EditError, match="NaN or Inf"):
        WeightDelta(bad, delta.provenance).save(tmp_path / "nan.safetensors")
    assert not (tmp_path / "nan.safetensors").exists()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ExportError, match="truncated or corrupted"):
        WeightDelta.load(truncated)


def test_edit_cli_with_layers_and_with_a_localization_file(tmp_path, twin_dirs):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_recipe(str(twin_dirs["sd1"])).source_text)
    runner = CliRunner()
    result = runner.invoke(
        cli, ["edit", str(recipe), "--layers", "6,7", "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "a" / "edit.json").read_text())
    assert report["layers"] == [
        "mid_block.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    ]
    assert (tmp_path / "a" / "recipe.yaml").read_text() == recipe.read_text()
    delta = WeightDelta.load(tmp_path / "a" / "delta.safetensors")
    assert report["delta_sha256"] == delta.sha256()

    localization = {"format": "locopack.localization/1"}
    (tmp_path / "loc.json").write_text(json.dumps(localization))
    result = runner.invoke(
        cli,
        [
            "edit",
            str(recipe),
            "--localization",
            str(tmp_path / "loc.json"),
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert result.exit_code == 1 and "not a readable localization result" in result.output
    assert not (tmp_path / "b" / "delta.safetensors").exists()

    result = runner.invoke(
        cli, ["edit", str(recipe), "--layers", "nope", "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 1 and "--layers: 'nope'" in result.output
