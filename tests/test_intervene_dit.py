"""The text-stream swap of joint-attention transformers: exact when it changes nothing, and it
moves the image exactly where text is planted to reach it."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from locopack.errors import ModelLayoutError
from locopack.hooks.joint import swap_text_stream, swap_windows
from locopack.localize.windows import candidate_windows
from locopack.models import get_family, load_pipeline

ORIGINAL, ALTERED = "a painting of a cat in the style of van gogh", "a photo of a red car"
GUIDANCE = {"sd3": 3.0, "flux": 1.0}  # SD3 runs [uncond; cond] batches, FLUX one pass


@pytest.fixture(scope="module")
def dit_pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit-swap")
    return {
        name: load_pipeline(str(get_family(name).save_twin(root / name, seed=0)))
        for name in ("sd3", "flux")
    }


def _images(pipe, family, prompt, n=1, steps=2):
    return pipe(
        prompt,
        num_images_per_prompt=n,
        num_inference_steps=steps,
        guidance_scale=GUIDANCE[family.name],
        generator=[torch.Generator().manual_seed(0) for _ in range(n)],
        output_type="np",
        height=16,
        width=16,
        **family.call_kwargs(),
    ).images


@torch.no_grad()
def _encode(pipe, family, prompt):
    """The prompt's transformer text input, as the pipeline computes it (without autograd,
    whose attention kernels differ in the last bits)."""
    return family.encode(pipe, [prompt])


def _paths(pipe, family):
    return [s.path for s in family.sites(pipe.transformer)]


@contextlib.contextmanager
def _planted(pipe, family, window):
    """Text reaches the image only through ``window``: every other site's text keys/values
    are zero, and the pooled vector is a constant."""
    transformer = pipe.transformer
    text = {"length": 0}

    def fix_pooled(_module, _args, kwargs):
        text["length"] = kwargs["encoder_hidden_states"].shape[1]
        return (), {**kwargs, "pooled_projections": torch.zeros_like(kwargs["pooled_projections"])}

    def zero_text(_module, _inputs, output):
        output = output.clone()
        output[:, : text["length"]] = 0  # at joint sites every row is a text row
        return output

    handles = [transformer.register_forward_pre_hook(fix_pooled, with_kwargs=True)]
    for site in family.sites(transformer):
        if site.path not in window:
            for module in (site.key, site.value):
                handles.append(transformer.get_submodule(module).register_forward_hook(zero_text))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_no_window_or_the_same_prompt_reproduces_the_pipeline_bit_for_bit(name, dit_pipes):
    pipe, family = dit_pipes[name]
    paths = _paths(pipe, family)
    plain = _images(pipe, family, ORIGINAL, n=3)
    same = _encode(pipe, family, ORIGINAL)[0]
    with swap_windows(family, pipe.transformer, [[], [], []], same, same):
        np.testing.assert_array_equal(_images(pipe, family, ORIGINAL, n=3), plain)
    windows = [[], paths, paths[1:3]]
    with swap_windows(family, pipe.transformer, windows, same, same):
        np.testing.assert_array_equal(_images(pipe, family, ORIGINAL, n=3), plain)
    altered = _encode(pipe, family, ALTERED)[0]
    with swap_windows(family, pipe.transformer, windows, same, altered):
        swapped = _images(pipe, family, ORIGINAL, n=3)
    np.testing.assert_array_equal(swapped[0], plain[0])
    assert np.abs(swapped[1] - plain[1]).max() > 1e-3


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_keys_values_are_substituted_not_the_text_stream_input(name, dit_pipes):
    """On the first denoiser call: sites before the window keep the original's text keys,
    the window gets the altered stream's, and the window block's text-stream input stays."""
    pipe, family = dit_pipes[name]
    sites = family.sites(pipe.transformer)
    middle = sites[2]
    norm = pipe.transformer.get_submodule(middle.path.rsplit(".", 1)[0]).norm1_context

    def first_call(prompt, window=()):
        """Text keys of every site (after the swap) and the window block's text-stream
        input, as the real call computes them (it fires last: the alongside run is first)."""
        seen: dict[str, torch.Tensor] = {}
        altered = _encode(pipe, family, ALTERED)
        with _planted(pipe, family, [s.path for s in sites]):  # only the pooled vector fixed
            with swap_text_stream(pipe.transformer, sites, altered, [list(window)]):
                hooks = [
                    pipe.transformer.get_submodule(s.key).register_forward_hook(
                        lambda _m, _i, o, p=s.path: seen.__setitem__(p, o[-1, :16].clone())
                    )
                    for s in sites
                ]
                hooks.append(
                    norm.register_forward_hook(lambda _m, i, _o: seen.__setitem__("in", i[0][-1]))
                )
                _images(pipe, family, prompt, steps=1)
                for hook in hooks:
                    hook.remove()
        return seen

    original, target = first_call(ORIGINAL), first_call(ALTERED)
    swapped = first_call(ORIGINAL, [middle.path])
    for site in sites[:2]:
        torch.testing.assert_close(swapped[site.path], original[site.path], rtol=0, atol=0)
    torch.testing.assert_close(swapped[middle.path], target[middle.path], rtol=0, atol=0)
    torch.testing.assert_close(swapped["in"], original["in"], rtol=0, atol=0)
    assert (original[middle.path] - target[middle.path]).abs().max() > 1e-3


@pytest.mark.parametrize(
    "name, start", [("sd3", 0), ("sd3", 3), ("flux", 1), ("flux", 2), ("flux", 4)]
)
def test_the_swap_moves_the_image_only_at_the_planted_window(name, start, dit_pipes):
    pipe, family = dit_pipes[name]
    paths = _paths(pipe, family)
    planted = paths[start : start + 2]
    windows = candidate_windows(paths, 2)
    original = _encode(pipe, family, ORIGINAL)[0]
    altered = _encode(pipe, family, ALTERED)[0]
    with _planted(pipe, family, planted):
        target = _images(pipe, family, ALTERED)[0]
        plain = _images(pipe, family, ORIGINAL)[0]
        with swap_windows(family, pipe.transformer, windows, original, altered):
            swapped = _images(pipe, family, ORIGINAL, n=len(windows))
    effect = np.abs(plain - target).max()
    to_target = [float(np.abs(image - target).max()) for image in swapped]
    to_plain = [float(np.abs(image - plain).max()) for image in swapped]
    chosen = windows.index(planted)
    floor = 2e-6  # a batch of windows vs one image differs by up to ~1e-6
    assert effect > 100 * floor
    assert to_target[chosen] <= floor
    for i, window in enumerate(windows):
        if not set(window) & set(planted):
            assert to_plain[i] <= floor, (window, to_plain[i])
        elif i != chosen:
            assert to_target[i] > 50 * floor, (window, to_target[i])
    assert int(np.argmin(to_target)) == chosen


def test_the_swap_names_its_errors(dit_pipes):
    pipe, family = dit_pipes["flux"]
    sites = family.sites(pipe.transformer)
    altered = _encode(pipe, family, ALTERED)
    with pytest.raises(ModelLayoutError, match="not a site"):
        with swap_text_stream(pipe.transformer, sites, altered, [["transformer_blocks.9.attn"]]):
            pass
    with pytest.raises(ModelLayoutError, match="2 windows for 1"):
        with swap_text_stream(pipe.transformer, sites, altered, [[], []]):
            pass
    hooks_before = sum(len(m._forward_hooks) for m in pipe.transformer.modules())
    with pytest.raises(ModelLayoutError, match="batch has"):
        with swap_text_stream(pipe.transformer, sites, altered, [[sites[0].path]]):
            _images(pipe, family, ORIGINAL, n=3)
    assert sum(len(m._forward_hooks) for m in pipe.transformer.modules()) == hooks_before
