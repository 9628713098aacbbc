"""Planted windows: a model whose right window is known, to check a sweep against.

:func:`plant_window` scales the key/value projections of every site outside one window (to
zero by default), so that only that window reads the text at full strength: swapping the
altered prompt's states there moves the image most.  :class:`ReferenceScorer` scores an image
by its closeness to what the model draws for the text with no swap, so the planted window
gets the lowest score to the original prompt.  Tests and ``scripts/bench_localize.py`` use
both; on such a model every mode must choose the planted window.

Joint-attention transformers (SD3, FLUX) need :func:`planted_text_window` instead: their
single-stream blocks map image tokens with the same weights, and the pooled vector carries
text to every block, so the planting is a scoped pair of hooks rather than a weight change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from .race import step_counts

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily


def plant_window(
    pipe: DiffusionPipeline, family: type[ModelFamily], start: int, size: int, leak: float = 0.0
) -> list[str]:
    """Scale the key and value weights of every site outside ``start .. start+size-1`` by
    ``leak`` (in place); returns the site paths in order."""
    denoiser = getattr(pipe, family.denoiser_attr)
    sites = family.sites(denoiser)
    with torch.no_grad():
        for site in sites[:start] + sites[start + size :]:
            denoiser.get_submodule(site.key).weight.mul_(leak)
            denoiser.get_submodule(site.value).weight.mul_(leak)
    return [s.path for s in sites]


@contextlib.contextmanager
def planted_text_window(
    pipe: DiffusionPipeline, family: type[ModelFamily], start: int, size: int, leak: float = 0.0
) -> Iterator[list[str]]:
    """Within the block, text reaches a joint-attention transformer's image only through the
    sites ``start .. start+size-1``: every other site's text keys/values (the text rows of
    its projections' outputs) are scaled by ``leak``, and the pooled vector (where the family
    has one) is zero.  Yields the site paths in order."""
    denoiser = getattr(pipe, family.denoiser_attr)
    sites = family.sites(denoiser)
    text = {"length": 0}

    def fix_pooled(_module, args, kwargs):
        text["length"] = kwargs["encoder_hidden_states"].shape[1]
        if kwargs.get("pooled_projections") is None:
            return None
        return args, {
            **kwargs,
            "pooled_projections": torch.zeros_like(kwargs["pooled_projections"]),
        }

    def scale_text(_module, _inputs, output):
        output = output.clone()
        output[:, : text["length"]] *= leak  # at text-only sites every row is a text row
        return output

    handles = [denoiser.register_forward_pre_hook(fix_pooled, with_kwargs=True)]
    try:
        for site in sites[:start] + sites[start + size :]:
            for path in (site.key, site.value):
                handles.append(denoiser.get_submodule(path).register_forward_hook(scale_text))
        yield [s.path for s in sites]
    finally:
        for handle in handles:
            handle.remove()


class ReferenceScorer:
    """Similarity (negative mean pixel distance) to the reference images of a text: what the
    pipeline draws for it with each seed, step count and resolution a sweep may use (the
    closest reference of the image's size counts)."""

    name = "reference-images"

    def __init__(
        self,
        pipe: DiffusionPipeline,
        family: type[ModelFamily],
        texts: list[str],
        steps: int,
        guidance: float,
        seeds: tuple[int, ...] = (0,),
        resolutions: tuple[int | None, ...] = (None,),
    ):
        self.references: dict[str, list[np.ndarray]] = {text: [] for text in texts}
        for text in dict.fromkeys(texts):
            for count in step_counts(steps):
                for seed in seeds:
                    for resolution in resolutions:
                        size = {"height": resolution, "width": resolution} if resolution else {}
                        image = pipe(
                            prompt=text,
                            num_inference_steps=count,
                            guidance_scale=guidance,
                            generator=torch.Generator(pipe.device).manual_seed(seed),
                            output_type="pil",
                            **size,
                            **family.call_kwargs(),
                        ).images[0]
                        self.references[text].append(np.asarray(image, dtype=np.float32))

    def __call__(self, images: list, texts: list[str]) -> list[float]:
        scores = []
        for image, text in zip(images, texts, strict=True):
            pixels = np.asarray(image, dtype=np.float32)
            scores.append(
                -min(
                    float(np.abs(pixels - ref).mean())
                    for ref in self.references[text]
                    if ref.shape == pixels.shape
                )
            )
        return scores
