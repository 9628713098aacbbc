"""Neuron-level editing on the joint-attention twins: activations taken while denoising, the
override at double-stream (joint) blocks, and single-stream blocks refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from locopack.edit.activations import neuron_edit_for, projection_activations
from locopack.edit.neurons import override_neurons
from locopack.errors import EditError
from locopack.models import LoadedBase, get_family
from locopack.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def joint_pipes():
    """{name: (twin, family)}; FLUX.2 with the 64 text tokens its twin recipe sets."""
    families = {name: get_family(name) for name in ("sd3", "flux")}
    families["flux2"] = get_family("flux2").with_t5_length(64)
    return {name: (family.build_twin(seed=0), family) for name, family in families.items()}


def _recipe(name: str, timesteps: str = "[0.0, 1.0]"):
    text = (ROOT / "recipes" / "twin" / f"{name}-erase-van-gogh.yaml").read_text()
    return parse_recipe(text.replace("timesteps: [0.0, 1.0]", f"timesteps: {timesteps}"), "r.yaml")


@pytest.mark.parametrize("name", ["sd3", "flux", "flux2"])
def test_activations_are_what_the_projection_emits_while_denoising(name, joint_pipes):
    """At one probe (seed 0, first step) the mean activation is the mean over the text rows of
    what the key projection emits in the pipeline's first transformer call."""
    pipe, family = joint_pipes[name]
    recipe = _recipe(name, "[0.0]")
    site = family.sites(pipe.transformer)[1]
    prompts = ["a painting in the style of van gogh", "a photo of a cat"]
    seen = []
    hook = pipe.transformer.get_submodule(site.key).register_forward_hook(
        lambda _m, _i, out: seen.append(out[-len(prompts) :].mean(dim=1))
    )
    settings = recipe.localize
    try:
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
    finally:
        hook.remove()
    found = projection_activations(pipe, family, prompts, [site.path], "key", recipe)
    torch.testing.assert_close(found[site.key], seen[0], rtol=1e-4, atol=1e-5)


def test_the_override_sets_the_neurons_of_a_joint_block(joint_pipes):
    pipe, family = joint_pipes["sd3"]
    site = family.sites(pipe.transformer)[2]
    edit = neuron_edit_for(LoadedBase(pipe, family), _recipe("sd3"), [site.path], top_k=4)
    assert edit.total() == 4 and set(edit.overrides) <= {site.key, site.value}
    for path, (index, value) in edit.overrides.items():
        module = pipe.transformer.get_submodule(path)
        with override_neurons(pipe.transformer, edit):
            out = module(torch.randn(1, 5, module.in_features))
        torch.testing.assert_close(out[..., index], value.expand(1, 5, -1), rtol=0, atol=0)


def test_single_stream_blocks_are_refused(joint_pipes):
    pipe, family = joint_pipes["flux"]
    single = [s.path for s in family.sites(pipe.transformer) if not s.text_only]
    with pytest.raises(EditError, match="single-stream site"):
        neuron_edit_for(LoadedBase(pipe, family), _recipe("flux"), single[:1], top_k=2)
