"""A synthetic "toy world" for training a tiny text-to-image model offline, with its detectors.

An image is 32x32 RGB: one colored shape (6 colors x 3 shapes, 13-19 px, random position) on a
gray background texture (4 textures that act as "styles").  Captions come from templates; one
template is never used in training (:data:`HELD_OUT_TEMPLATES`) so it can serve as held-out
paraphrases.  Two made-up facts bind a name to a fixed appearance:

- "the emblem of veridia" = a purple triangle on a plain background;
- "the flag of zorbania" = an orange square on a checker background.

The detectors read pixel statistics only (no training), so they can judge generated images:
``detect_color`` (median of saturated pixels -> nearest palette color), ``detect_shape`` (best
IoU against an ideal circle / square / triangle fitted to the shape's bounding box) and
``detect_texture`` (background spread, horizontal/vertical gradient balance, dark fraction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 32
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 175, 60),
    "blue": (45, 80, 225),
    "yellow": (230, 215, 40),
    "purple": (150, 55, 200),
    "orange": (245, 135, 25),
}
COLORS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
TEXTURES = ("plain", "stripes", "dots", "checker")

#: Caption templates used in training, with their sampling weights (the last names no texture).
TRAIN_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("a {color} {shape} on a {texture} background", 0.45),
    ("a {color} {shape} with {texture}", 0.40),
    ("a {color} {shape}", 0.15),
)
#: Caption templates never used in training: held-out paraphrases.
HELD_OUT_TEMPLATES: tuple[str, ...] = ("{texture} pattern behind a {color} {shape}",)

#: Made-up facts: the caption phrase and the appearance (color, shape, texture) it names.
FACTS: dict[str, tuple[str, str, str]] = {
    "the emblem of veridia": ("purple", "triangle", "plain"),
    "the flag of zorbania": ("orange", "square", "checker"),
}
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


def _background(texture: str, rng: np.random.Generator) -> np.ndarray:
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


def shape_mask(shape: str, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The ideal (SIZE, SIZE) boolean mask of ``shape`` filling the box (x0, y0, w, h)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    u, v = (xx - x0) / w, (yy - y0) / h  # box coordinates in [0, 1]
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "square":
        return inside
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "triangle":  # apex at top centre, base at the bottom
        return inside & (np.abs(u - 0.5) <= v / 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render(color: str, shape: str, texture: str, rng: np.random.Generator) -> np.ndarray:
    """Render one image as ``np.uint8`` of shape (32, 32, 3)."""
    img = np.repeat(_background(texture, rng)[..., None], 3, axis=2)
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


def caption_attributes(caption: str) -> dict[str, str]:
    """The attributes a caption names: a fact names all three; a word names its attribute."""
    for fact, (color, shape, texture) in FACTS.items():
        if fact in caption:
            return {"color": color, "shape": shape, "texture": texture}
    words = caption.split()
    found: dict[str, str] = {}
    for key, values in (("color", COLORS), ("shape", SHAPES), ("texture", TEXTURES)):
        hits = [v for v in values if v in words]
        if hits:
            found[key] = hits[0]
    return found


# ---------------------------------------------------------------------------------------------
# Detectors (pixel statistics only)
# ---------------------------------------------------------------------------------------------


def _saturation(img: np.ndarray) -> np.ndarray:
    f = img.astype(float)
    return f.max(axis=2) - f.min(axis=2)


def foreground_mask(img: np.ndarray) -> np.ndarray:
    """Saturated pixels: the colored shape (the background is gray)."""
    return _saturation(img) > 50


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (generated images may have specks)."""
    labels = np.zeros(mask.shape, int)
    best, best_size, current = 0, 0, 0
    for y, x in zip(*np.nonzero(mask), strict=True):
        if labels[y, x]:
            continue
        current += 1
        stack, size = [(y, x)], 0
        labels[y, x] = current
        while stack:
            cy, cx = stack.pop()
            size += 1
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < SIZE and 0 <= nx < SIZE and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else mask


def detect_color(img: np.ndarray) -> str:
    """The palette color nearest to the median of the saturated pixels."""
    mask = foreground_mask(img)
    if mask.sum() < 4:  # nothing saturated: take the most saturated pixels
        mask = _saturation(img) >= np.sort(_saturation(img).ravel())[-16]
    median = np.median(img[mask].astype(float), axis=0)
    names = list(PALETTE)
    dists = [np.sum((median - np.asarray(PALETTE[n], float)) ** 2) for n in names]
    return names[int(np.argmin(dists))]


def shape_scores(img: np.ndarray) -> dict[str, float]:
    """IoU of the shape's mask with each ideal shape fitted to its bounding box."""
    mask = _largest_component(foreground_mask(img))
    if mask.sum() < 4:
        return dict.fromkeys(SHAPES, 0.0)
    ys, xs = np.nonzero(mask)
    x0, y0 = xs.min(), ys.min()
    w, h = xs.max() - x0 + 1, ys.max() - y0 + 1
    scores = {}
    for shape in SHAPES:
        ideal = shape_mask(shape, x0, y0, w, h)
        scores[shape] = float((ideal & mask).sum() / max((ideal | mask).sum(), 1))
    return scores


def detect_shape(img: np.ndarray) -> str:
    """The shape whose ideal mask best overlaps the saturated region (forced choice)."""
    scores = shape_scores(img)
    return max(scores, key=scores.__getitem__)


def texture_features(img: np.ndarray) -> dict[str, float]:
    """Background statistics: spread, horizontal/vertical gradients, dark-pixel fraction."""
    gray = img.astype(float).mean(axis=2)
    fg = foreground_mask(img)
    grown = fg.copy()  # dilate by 2 px: shape edges are not background
    for _ in range(2):
        grown[1:] |= grown[:-1].copy()
        grown[:-1] |= grown[1:].copy()
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
    bg = ~grown
    if bg.sum() < 32:
        bg = ~fg
    values = gray[bg]
    both_x = bg[:, 1:] & bg[:, :-1]
    both_y = bg[1:] & bg[:-1]
    gx = np.abs(np.diff(gray, axis=1))[both_x].mean() if both_x.any() else 0.0
    gy = np.abs(np.diff(gray, axis=0))[both_y].mean() if both_y.any() else 0.0
    lo, hi = np.percentile(values, [5, 95])
    return {
        "std": float(values.std()),
        "gx": float(gx),
        "gy": float(gy),
        "dark": float(np.mean(values < (lo + hi) / 2)),
    }


def detect_texture(img: np.ndarray) -> str:
    """Plain (flat), stripes (vertical: x-gradients only), dots (sparse dark) or checker."""
    f = texture_features(img)
    if f["std"] < 9 and f["gx"] + f["gy"] < 8:
        return "plain"
    if f["gx"] > 2.0 * f["gy"]:
        return "stripes"
    # dots: a light field with a few dark specks (about 1/9 of the pixels are dark);
    # checker: half dark, half light.
    return "dots" if f["dark"] < 0.3 else "checker"


def detect(img: np.ndarray) -> dict[str, str]:
    """All three attributes, plus ``fact`` when the image matches a fact's appearance."""
    found = {"color": detect_color(img), "shape": detect_shape(img), "texture": detect_texture(img)}
    found["fact"] = next(
        (f for f, attrs in FACTS.items() if attrs == tuple(found[k] for k in ATTRIBUTES)), ""
    )
    return found


ATTRIBUTES = ("color", "shape", "texture")
