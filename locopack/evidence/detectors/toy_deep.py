"""The deep toy world's detectors: the toy world's color, shape and texture, plus size.

The deep toy world (``scripts/toy_world_deep.py`` renders it; its model has the 16
cross-attention sites of Stable Diffusion 1.5) draws the toy world's shapes, colors and
textures at one of two sizes, and binds two made-up facts of its own to an appearance of all
four attributes.  :func:`detect_size` reads the side of the shape's bounding box.

:func:`toy_deep_detector` is the ``toy-deep`` detector of a recipe's ``evidence`` section.
"""

from __future__ import annotations

import numpy as np

from .toy import (
    COLORS,
    SHAPES,
    TEXTURES,
    detect_color,
    detect_shape,
    detect_texture,
    fact_shown,
    findings,
    foreground_mask,
    largest_component,
    named_attributes,
)

SIZES = ("small", "large")
#: the side in pixels of each size's shapes, as ``range(low, high)``
SIZE_PIXELS: dict[str, tuple[int, int]] = {"small": (11, 14), "large": (18, 23)}
#: a bounding box whose longer side is at most this many pixels is ``small``
SMALL_AT_MOST = 15

ATTRIBUTES = ("color", "shape", "texture", "size")
VALUES: dict[str, tuple[str, ...]] = {
    "color": COLORS,
    "shape": SHAPES,
    "texture": TEXTURES,
    "size": SIZES,
}

#: Made-up facts: the caption phrase and the appearance (color, shape, texture, size) it names.
FACTS: dict[str, tuple[str, str, str, str]] = {
    "the seal of quorvia": ("green", "circle", "dots", "small"),
    "the crest of melnar": ("blue", "triangle", "stripes", "large"),
}


def caption_attributes(caption: str) -> dict[str, str]:
    """The attributes a caption names: a fact names all four; a word names its attribute."""
    return named_attributes(caption, FACTS, VALUES)


def detect_size(img: np.ndarray) -> str:
    """``small`` or ``large``, from the longer side of the shape's bounding box."""
    mask = largest_component(foreground_mask(img))
    if mask.sum() < 4:
        return "small"
    ys, xs = np.nonzero(mask)
    side = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    return "small" if side <= SMALL_AT_MOST else "large"


def detect(img: np.ndarray) -> dict[str, str]:
    """All four attributes, plus ``fact`` when the image matches a fact's appearance."""
    found = {
        "color": detect_color(img),
        "shape": detect_shape(img),
        "texture": detect_texture(img),
        "size": detect_size(img),
    }
    return found | {"fact": fact_shown(found, FACTS)}


def captions() -> list[str]:
    """Every caption of the world's attribute template (``a {size} {color} {shape} on a
    {texture} background``): the ``toy-deep`` source of sampled prompts."""
    return [
        f"a {size} {color} {shape} on a {texture} background"
        for size in SIZES
        for color in COLORS
        for shape in SHAPES
        for texture in TEXTURES
    ]


def toy_deep_detector(images, prompts) -> list[dict[str, float]]:
    """Findings per image (:func:`locopack.evidence.detectors.toy.findings`) for the color, shape,
    texture, size and fact (a fact names its four attributes)."""
    return [
        findings(detect(np.asarray(image.convert("RGB"))), caption_attributes(prompt))
        for image, prompt in zip(images, prompts, strict=True)
    ]
