"""Planted windows: a model whose right window is known, to check a sweep against.

:func:`plant_window` scales the key/value projections of every site outside one window (to
zero by default), so that only that window reads the text at full strength: swapping the
altered prompt's states there moves the image most.  :class:`ReferenceScorer` scores an image
by its closeness to what the model draws for the text with no swap, so the planted window
gets the lowest score to the original prompt.  Tests and ``scripts/bench_localize.py`` use
both; on such a model every mode must choose the planted window.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .race import step_counts


def plant_window(pipe: Any, family: Any, start: int, size: int, leak: float = 0.0) -> list[str]:
    """Scale the key and value weights of every site outside ``start .. start+size-1`` by
    ``leak`` (in place); returns the site paths in order."""
    denoiser = getattr(pipe, family.denoiser_attr)
    sites = family.sites(denoiser)
    with torch.no_grad():
        for site in sites[:start] + sites[start + size :]:
            denoiser.get_submodule(site.key).weight.mul_(leak)
            denoiser.get_submodule(site.value).weight.mul_(leak)
    return [s.path for s in sites]


class ReferenceScorer:
    """Similarity (negative mean pixel distance) to the reference images of a text: what the
    pipeline draws for it with each seed, step count and resolution a sweep may use (the
    closest reference of the image's size counts)."""

    name = "reference-images"

    def __init__(
        self,
        pipe: Any,
        family: Any,
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
                            text,
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
