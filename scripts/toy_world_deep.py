"""The deep toy world: the toy world's shapes at two sizes, for a model with SD-1.5's sites.

An image is 32x32 RGB: one colored shape (6 colors x 3 shapes x 2 sizes: small 11-13 px, large
18-22 px, random position) on a gray background texture (the toy world's 4 "styles").  Captions
name the size or leave it out (then either size fits); one template is held out.  Two made-up
facts bind a name to an appearance of all four attributes:

- "the seal of quorvia" = a small green circle on a dots background;
- "the crest of melnar" = a large blue triangle on a stripes background.

It has the same interface as ``toy_world.py`` (``train_toy_world.py --world deep`` and
``eval_toy_world.py --world deep`` read it); its detectors live in the package,
:mod:`locopack.evidence.detectors.toy_deep`, since releases report them as evidence.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from toy_world import background

from locopack.evidence.detectors.toy import PALETTE, SIZE, shape_mask
from locopack.evidence.detectors.toy_deep import (  # noqa: F401  (the world's names, read by the scripts)
    ATTRIBUTES,
    COLORS,
    FACTS,
    SHAPES,
    SIZE_PIXELS,
    SIZES,
    TEXTURES,
    VALUES,
    caption_attributes,
    detect,
)

#: Caption templates used in training, with their sampling weights.
TRAIN_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("a {size} {color} {shape} on a {texture} background", 0.30),
    ("a {size} {color} {shape} with {texture}", 0.25),
    ("a {color} {shape} on a {texture} background", 0.15),
    ("a {color} {shape} with {texture}", 0.12),
    ("a {size} {color} {shape}", 0.10),
    ("a {color} {shape}", 0.08),
)
#: Caption templates never used in training: held-out paraphrases.
HELD_OUT_TEMPLATES: tuple[str, ...] = ("{texture} pattern behind a {size} {color} {shape}",)

FACT_TEMPLATES: tuple[str, ...] = ("{fact}", "a picture of {fact}")
HELD_OUT_FACT_TEMPLATES: tuple[str, ...] = ("a drawing of {fact}",)
FACT_RATE = 0.04  # share of the data for each fact

#: Every word of the world (plus a few generic prompt words): one token each in the tokenizer.
WORLD_WORDS: tuple[str, ...] = tuple(
    w
    for w in dict.fromkeys(
        " ".join(t for t, _ in TRAIN_TEMPLATES).split()
        + " ".join(HELD_OUT_TEMPLATES + FACT_TEMPLATES + HELD_OUT_FACT_TEMPLATES).split()
        + " ".join(FACTS).split()
        + list(COLORS + SHAPES + TEXTURES + SIZES)
        + "an image photo painting style in and of".split()
    )
    if "{" not in w
)


@dataclass(frozen=True)
class Sample:
    """One rendered training example: its attributes, its caption and the image."""

    color: str
    shape: str
    texture: str
    size: str
    caption: str
    fact: str | None
    image: np.ndarray


def caption_for(template: str, color: str, shape: str, texture: str, size: str) -> str:
    """Fill a caption template (missing placeholders are ignored)."""
    return template.format(color=color, shape=shape, texture=texture, size=size)


def render(color: str, shape: str, texture: str, size: str, rng: np.random.Generator):
    """Render one image as ``np.uint8`` of shape (32, 32, 3)."""
    img = np.repeat(background(texture, rng)[..., None], 3, axis=2)
    side = int(rng.integers(*SIZE_PIXELS[size]))
    x0, y0 = (int(v) for v in rng.integers(1, SIZE - side, size=2))
    mask = shape_mask(shape, x0, y0, side, side)
    fill = np.asarray(PALETTE[color], float) + rng.normal(0.0, 6.0, size=3)
    img[mask] = fill + rng.normal(0.0, 2.0, size=(int(mask.sum()), 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sample_caption(rng: np.random.Generator) -> tuple[str, str, str, str, str, str | None]:
    """Draw (color, shape, texture, size, caption, fact) from the training distribution."""
    u = rng.random()
    for i, (fact, appearance) in enumerate(FACTS.items()):
        if u < FACT_RATE * (i + 1):
            template = FACT_TEMPLATES[int(rng.integers(len(FACT_TEMPLATES)))]
            return *appearance, template.format(fact=fact), fact
    chosen = [VALUES[k][int(rng.integers(len(VALUES[k])))] for k in ATTRIBUTES]
    templates, weights = zip(*TRAIN_TEMPLATES, strict=True)
    template = templates[int(rng.choice(len(templates), p=np.asarray(weights)))]
    return *chosen, caption_for(template, *chosen), None


def sample_dataset(n: int, seed: int) -> list[Sample]:
    """``n`` training examples drawn with ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        *attrs, caption, fact = sample_caption(rng)
        out.append(Sample(*attrs, caption, fact, render(*attrs, rng)))
    return out


def all_training_captions() -> list[str]:
    """Every caption the training distribution can produce, sorted."""
    combos = itertools.product(*(VALUES[k] for k in ATTRIBUTES))
    caps = {caption_for(t, *a) for a in combos for t, _ in TRAIN_TEMPLATES}
    caps |= {t.format(fact=f) for t in FACT_TEMPLATES for f in FACTS}
    return sorted(caps)
