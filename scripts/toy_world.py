"""A synthetic "toy world" for training a tiny text-to-image model offline, with its detectors.

An image is 32x32 RGB: one colored shape (6 colors x 3 shapes, 13-19 px, random position) on a
gray background texture (4 textures that act as "styles").  Captions come from templates; one
template is never used in training (:data:`HELD_OUT_TEMPLATES`) so it can serve as held-out
paraphrases.  Two made-up facts bind a name to a fixed appearance:

- "the emblem of veridia" = a purple triangle on a plain background;
- "the flag of zorbania" = an orange square on a checker background.

The world's palette, shapes, textures, facts and its detectors (pixel statistics only) live in
the package, :mod:`locopack.evidence.detectors.toy`, since releases report them as evidence; this
module imports them from there, so the scripts keep reading them as ``toy_world.<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from locopack.evidence.detectors.toy import (  # noqa: F401  (the world's names, read by the scripts)
    ATTRIBUTES,
    COLORS,
    FACTS,
    PALETTE,
    SHAPES,
    SIZE,
    TEXTURES,
    VALUES,
    caption_attributes,
    detect,
    detect_color,
    detect_shape,
    detect_texture,
    shape_mask,
)

#: Caption templates used in training, with their sampling weights (the last names no texture).
TRAIN_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("a {color} {shape} on a {texture} background", 0.45),
    ("a {color} {shape} with {texture}", 0.40),
    ("a {color} {shape}", 0.15),
)
#: Caption templates never used in training: held-out paraphrases.
HELD_OUT_TEMPLATES: tuple[str, ...] = ("{texture} pattern behind a {color} {shape}",)

FACT_TEMPLATES: tuple[str, ...] = ("{fact}", "a picture of {fact}")
HELD_OUT_FACT_TEMPLATES: tuple[str, ...] = ("a drawing of {fact}",)
FACT_RATE = 0.04  # share of the data for each fact

#: Every word of the world (plus a few generic prompt words): one token each in the tokenizer.
WORLD_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        " ".join(t for t, _ in TRAIN_TEMPLATES).split()
        + " ".join(HELD_OUT_TEMPLATES + FACT_TEMPLATES + HELD_OUT_FACT_TEMPLATES).split()
        + " ".join(FACTS).split()
        + list(COLORS + SHAPES + TEXTURES)
        + "an image photo painting style in and of".split()
    )
)
WORLD_WORDS = tuple(w for w in WORLD_WORDS if "{" not in w)


@dataclass(frozen=True)
class Sample:
    """One rendered training example: its attributes, its caption and the image."""

    color: str
    shape: str
    texture: str
    caption: str
    fact: str | None
    image: np.ndarray


def caption_for(template: str, color: str, shape: str, texture: str) -> str:
    """Fill a caption template (missing placeholders are ignored)."""
    return template.format(color=color, shape=shape, texture=texture)


def background(texture: str, rng: np.random.Generator) -> np.ndarray:
    """A gray (H, W) background with the given texture and a random phase."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = float(rng.uniform(120, 136))
    if texture == "plain":
        bg = np.full((SIZE, SIZE), base)
    elif texture == "stripes":  # vertical bands, 3 px light / 3 px dark
        bg = np.where(((xx + rng.integers(6)) // 3) % 2 == 0, base + 32, base - 32)
    elif texture == "dots":  # 2x2 dark dots on a 6-px grid over a light field
        px, py = rng.integers(6, size=2)
        on = (((xx + px) % 6) < 2) & (((yy + py) % 6) < 2)
        bg = np.where(on, base - 70, base + 25)
    elif texture == "checker":  # 4-px checks
        px, py = rng.integers(8, size=2)
        bg = np.where((((xx + px) // 4) + ((yy + py) // 4)) % 2 == 0, base + 32, base - 32)
    else:
        raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
    return bg + rng.normal(0.0, 2.0, size=bg.shape)


def render(color: str, shape: str, texture: str, rng: np.random.Generator) -> np.ndarray:
    """Render one image as ``np.uint8`` of shape (32, 32, 3)."""
    img = np.repeat(background(texture, rng)[..., None], 3, axis=2)
    size = int(rng.integers(13, 20))
    x0, y0 = (int(v) for v in rng.integers(1, SIZE - size, size=2))
    mask = shape_mask(shape, x0, y0, size, size)
    fill = np.asarray(PALETTE[color], float) + rng.normal(0.0, 6.0, size=3)
    img[mask] = fill + rng.normal(0.0, 2.0, size=(int(mask.sum()), 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def sample_caption(rng: np.random.Generator) -> tuple[str, str, str, str, str | None]:
    """Draw (color, shape, texture, caption, fact) from the training distribution."""
    u = rng.random()
    for i, (fact, (color, shape, texture)) in enumerate(FACTS.items()):
        if u < FACT_RATE * (i + 1):
            template = FACT_TEMPLATES[int(rng.integers(len(FACT_TEMPLATES)))]
            return color, shape, texture, template.format(fact=fact), fact
    color = COLORS[int(rng.integers(len(COLORS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    templates, weights = zip(*TRAIN_TEMPLATES, strict=True)
    template = templates[int(rng.choice(len(templates), p=np.asarray(weights)))]
    return color, shape, texture, caption_for(template, color, shape, texture), None


def sample_dataset(n: int, seed: int) -> list[Sample]:
    """``n`` training examples drawn with ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        color, shape, texture, caption, fact = sample_caption(rng)
        out.append(Sample(color, shape, texture, caption, fact, render(color, shape, texture, rng)))
    return out


def all_training_captions() -> list[str]:
    """Every caption the training distribution can produce, sorted."""
    caps = {
        caption_for(t, c, s, x)
        for t, _ in TRAIN_TEMPLATES
        for c in COLORS
        for s in SHAPES
        for x in TEXTURES
    }
    caps |= {t.format(fact=f) for t in FACT_TEMPLATES for f in FACTS}
    return sorted(caps)
