"""The intervention: exact on no sites, exact on all sites where text has no other path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locopack.errors import ModelLayoutError
from locopack.hooks.cross import swap_text_states, window_replacements

from .conftest import FAMILY_NAMES

ORIGINAL, ALTERED = "a painting of a cat in the style of van gogh", "a photo of a red car"


def _images(pipe, family, prompt, seed=0, guidance=3.0):
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        prompt,
        num_inference_steps=2,
        guidance_scale=guidance,
        generator=generator,
        output_type="np",
        **family.call_kwargs(),
    ).images


def _all_sites(pipe, family):
    return [s.path for s in family.sites(getattr(pipe, family.denoiser_attr))]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_no_sites_reproduces_the_original_exactly(name, twin_pipes):
    pipe, family = twin_pipes[name]
    plain = _images(pipe, family, ORIGINAL)
    with swap_text_states(getattr(pipe, family.denoiser_attr), {}):
        hooked = _images(pipe, family, ORIGINAL)
    np.testing.assert_array_equal(plain, hooked)


@pytest.mark.parametrize("name", ["sd1", "sd2", "pixart"])
def test_all_sites_reproduce_the_altered_prompt(name, twin_pipes):
    pipe, family = twin_pipes[name]
    denoiser = getattr(pipe, family.denoiser_attr)
    with torch.no_grad():
        altered = family.encode(pipe, [ALTERED])
    replacements = {path: altered for path in _all_sites(pipe, family)}
    mask = family.attention_mask(pipe, [ALTERED])
    masks = None if mask is None else {path: mask for path in replacements}
    assert (mask is not None) == (name == "pixart")
    with swap_text_states(denoiser, replacements, masks):
        swapped = _images(pipe, family, ORIGINAL)
    target = _images(pipe, family, ALTERED)
    assert np.abs(swapped - target).max() <= 1e-5
    assert np.abs(_images(pipe, family, ORIGINAL) - target).max() > 1e-3


@pytest.mark.parametrize("name", ["sdxl", "if"])
def test_pooled_text_path_keeps_the_original_prompt(name, twin_pipes):
    """Documented: the pooled embedding is not a site, so altering all sites changes the image
    but does not give the altered prompt's image."""
    pipe, family = twin_pipes[name]
    assert family.has_pooled_text_path
    with torch.no_grad():
        altered = family.encode(pipe, [ALTERED])
    with swap_text_states(
        getattr(pipe, family.denoiser_attr), {p: altered for p in _all_sites(pipe, family)}
    ):
        swapped = _images(pipe, family, ORIGINAL)
    original, target = _images(pipe, family, ORIGINAL), _images(pipe, family, ALTERED)
    assert np.abs(swapped - target).max() > 1e-4
    assert np.abs(swapped - original).max() > 1e-4


def test_only_the_conditional_half_is_altered_under_guidance(twin_pipes):
    pipe, family = twin_pipes["sd1"]
    seen = []
    key = pipe.unet.get_submodule(_all_sites(pipe, family)[0] + ".to_k")
    handle = key.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    altered = family.encode(pipe, [ALTERED]).detach()
    try:
        with swap_text_states(pipe.unet, {_all_sites(pipe, family)[0]: altered}):
            _images(pipe, family, ORIGINAL, guidance=3.0)
    finally:
        handle.remove()
    uncond = family.encode(pipe, [""]).detach()
    assert seen[0].shape[0] == 2
    torch.testing.assert_close(seen[0][0], uncond[0])
    torch.testing.assert_close(seen[0][1], altered[0])


def test_per_sample_windows_and_restoration_after_an_error(twin_pipes):
    pipe, family = twin_pipes["sd1"]
    sites = _all_sites(pipe, family)
    original = family.encode(pipe, [ORIGINAL]).detach()[0]
    altered = family.encode(pipe, [ALTERED]).detach()[0]
    replacements = window_replacements(sites, [[], sites[:2], sites[1:3]], original, altered)
    assert set(replacements) == set(sites[:3])
    torch.testing.assert_close(replacements[sites[0]][0], original)
    torch.testing.assert_close(replacements[sites[0]][1], altered)
    torch.testing.assert_close(replacements[sites[0]][2], original)
    torch.testing.assert_close(replacements[sites[2]][2], altered)

    hooks_before = sum(len(m._forward_pre_hooks) for m in pipe.unet.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with swap_text_states(pipe.unet, replacements):
            raise RuntimeError("boom")
    assert sum(len(m._forward_pre_hooks) for m in pipe.unet.modules()) == hooks_before
    with pytest.raises(ModelLayoutError, match="batch has"):
        with swap_text_states(pipe.unet, replacements):
            _images(pipe, family, ORIGINAL)  # 1 conditional sample, 3 replacements
    assert sum(len(m._forward_pre_hooks) for m in pipe.unet.modules()) == hooks_before
