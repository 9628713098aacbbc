"""The toy world's detectors: color, shape, texture and fact from pixel statistics alone.

The toy world (``scripts/toy_world.py`` renders it and trains its model) draws one colored
shape (6 colors x 3 shapes) on a gray background texture (4 textures); two made-up facts bind a
name to an appearance.  The detectors need no training, so they judge generated images:
:func:`detect_color` (median of saturated pixels -> nearest palette color), :func:`detect_shape`
(best IoU against an ideal circle / square / triangle fitted to the shape's bounding box) and
:func:`detect_texture` (background spread, horizontal/vertical gradient balance, dark fraction).

:func:`toy_detector` is the ``toy`` detector of a recipe's ``evidence`` section.
"""

from __future__ import annotations

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

ATTRIBUTES = ("color", "shape", "texture")
#: each attribute's values, in ATTRIBUTES order
VALUES: dict[str, tuple[str, ...]] = {"color": COLORS, "shape": SHAPES, "texture": TEXTURES}

#: Made-up facts: the caption phrase and the appearance (color, shape, texture) it names.
FACTS: dict[str, tuple[str, str, str]] = {
    "the emblem of veridia": ("purple", "triangle", "plain"),
    "the flag of zorbania": ("orange", "square", "checker"),
}


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


def named_attributes(caption: str, facts: dict, values: dict) -> dict[str, str]:
    """The attributes ``caption`` names in a toy world of ``facts`` (phrase -> appearance in
    ``values`` order) and ``values`` (attribute -> its words): a fact names them all, a word
    names its attribute."""
    for fact, appearance in facts.items():
        if fact in caption:
            return dict(zip(values, appearance, strict=True))
    words = caption.split()
    found: dict[str, str] = {}
    for key, options in values.items():
        hits = [v for v in options if v in words]
        if hits:
            found[key] = hits[0]
    return found


def fact_shown(detected: dict[str, str], facts: dict) -> str:
    """The fact whose appearance ``detected`` matches (attributes in the facts' order), or ''."""
    return next((f for f, attrs in facts.items() if attrs == tuple(detected.values())), "")


def caption_attributes(caption: str) -> dict[str, str]:
    """The attributes a caption names: a fact names all three; a word names its attribute."""
    return named_attributes(caption, FACTS, VALUES)


def _saturation(img: np.ndarray) -> np.ndarray:
    f = img.astype(float)
    return f.max(axis=2) - f.min(axis=2)


def foreground_mask(img: np.ndarray) -> np.ndarray:
    """Saturated pixels: the colored shape (the background is gray)."""
    return _saturation(img) > 50


def largest_component(mask: np.ndarray) -> np.ndarray:
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
    mask = largest_component(foreground_mask(img))
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
    return found | {"fact": fact_shown(found, FACTS)}


def captions() -> list[str]:
    """Every caption of the world's attribute template (``a {color} {shape} on a {texture}
    background``): the ``toy`` source of sampled prompts."""
    return [
        f"a {color} {shape} on a {texture} background"
        for color in COLORS
        for shape in SHAPES
        for texture in TEXTURES
    ]


def findings(detected: dict[str, str], asked: dict[str, str]) -> dict[str, float]:
    """A toy detector's findings for one image: 1.0 for each detected value (a fact by its
    name), and ``prompt``: 1.0 when every attribute the prompt asked for was detected."""
    out = {value: 1.0 for value in detected.values() if value}
    out["prompt"] = float(all(detected[k] == v for k, v in asked.items()))
    return out


def toy_detector(images, prompts) -> list[dict[str, float]]:
    """Findings per image (:func:`findings`) for the color, shape, texture and fact (a fact names
    its three attributes), as the toy benchmark counts them."""
    return [
        findings(detect(np.asarray(image.convert("RGB"))), caption_attributes(prompt))
        for image, prompt in zip(images, prompts, strict=True)
    ]
