"""Neuron-level editing end to end on a twin: CLI file, then the override at inference."""

from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner

from locopack.cli import cli
from locopack.edit.neurons import NeuronEdit, override_neurons
from locopack.models import load_pipeline

RECIPE = """
version: 1
name: neurons
base: {{model: {model}}}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting in the style of {{concept}}", "{{concept}} starry night"]
    target: "a painting"
    preserve: ["a photo of a dog", "a cat"]
"""


def _image(pipe, prompt="a painting in the style of van gogh"):
    generator = torch.Generator().manual_seed(0)
    return pipe(
        prompt, num_inference_steps=2, guidance_scale=3.0, generator=generator, output_type="np"
    ).images


def test_neurons_cli_then_override_sets_exactly_the_chosen_outputs(tmp_path, twin_dirs):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(model=twin_dirs["sd1"]))
    result = CliRunner().invoke(
        cli,
        [
            "neurons",
            str(recipe),
            "--layers",
            "6,7",
            "--top-k",
            "12",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    edit = NeuronEdit.load(tmp_path / "out" / "neurons.safetensors")
    assert edit.total() == 12
    assert edit.metadata["recipe_name"] == "neurons" and edit.metadata["statistic"] == "welch_t"

    pipe, _ = load_pipeline(str(twin_dirs["sd1"]))
    plain = _image(pipe)
    with override_neurons(pipe.unet, edit):
        edited = _image(pipe)
    for path, (idx, values) in edit.overrides.items():
        module = pipe.unet.get_submodule(path)
        x = torch.randn(2, 77, module.in_features)
        with override_neurons(pipe.unet, edit):
            overridden = module(x)
        torch.testing.assert_close(overridden[..., idx], values.expand(2, 77, -1), rtol=0, atol=0)
        rest = torch.ones(module.out_features, dtype=torch.bool)
        rest[idx] = False
        assert torch.equal(overridden[..., rest], module(x)[..., rest])
    assert np.abs(plain - edited).max() > 0
    np.testing.assert_array_equal(plain, _image(pipe))  # restored after the block


def test_zero_neurons_change_nothing(twin_dirs):
    pipe, _ = load_pipeline(str(twin_dirs["sd1"]))
    plain = _image(pipe)
    with override_neurons(pipe.unet, NeuronEdit({}, {})):
        np.testing.assert_array_equal(plain, _image(pipe))
