"""Specificity measured on the images: how much the edit changed what it should have left.

For every prompt, the before and after images of the same seed are compared with
scikit-image's SSIM (structural similarity, 1 = identical) and PSNR (dB; identical images are
recorded as :data:`PSNR_IDENTICAL`, since JSON has no infinity).  A preserve or unrelated
prompt whose mean SSIM over the seeds falls below the recipe's ``evidence.ssim_threshold``
is *flagged*: the card names it and shows its before | after images for every seed.
"""

from __future__ import annotations

import statistics

import numpy as np
from PIL import Image

#: the PSNR recorded for two identical images
PSNR_IDENTICAL = 100.0
#: the prompt sets where any change is a side effect (the others are meant to change)
CHECKED_SETS = ("preserve", "unrelated")


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def image_change(before: Image.Image, after: Image.Image) -> dict[str, float]:
    """SSIM and PSNR between two images of the same size."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = _pixels(before), _pixels(after)
    if np.array_equal(a, b):
        return {"ssim": 1.0, "psnr": PSNR_IDENTICAL}
    window = min(7, *a.shape[:2]) | 1  # odd, at most the image's side
    ssim = structural_similarity(a, b, channel_axis=2, data_range=255, win_size=window)
    psnr = peak_signal_noise_ratio(a, b, data_range=255)
    return {"ssim": float(ssim), "psnr": float(min(psnr, PSNR_IDENTICAL))}


def prompt_changes(
    prompts: list[str],
    before: dict[str, list[Image.Image]],
    after: dict[str, list[Image.Image]],
) -> dict[str, list[float]]:
    """Per prompt, the mean SSIM and PSNR over its seeds' before/after pairs."""
    out: dict[str, list[float]] = {"ssim": [], "psnr": []}
    for prompt in prompts:
        pairs = [image_change(b, a) for b, a in zip(before[prompt], after[prompt], strict=True)]
        for key in out:
            out[key].append(statistics.fmean(p[key] for p in pairs))
    return out


def flagged(change: dict[str, list[float]], threshold: float) -> list[int]:
    """The indices of the prompts whose mean SSIM is below ``threshold``."""
    return [i for i, ssim in enumerate(change["ssim"]) if ssim < threshold]


def flag_set(write_grid, stem: str, measured: dict, images: dict, threshold: float) -> dict:
    """A set's prompts whose images changed beyond ``threshold`` (``flagged``) and, where
    there are any, the grid of their images at every seed that ``write_grid(name, rows)``
    wrote (``flagged_grid``)."""
    prompts = [measured["prompts"][i] for i in flagged(measured["change"], threshold)]
    if not prompts:
        return {"flagged": []}
    rows = [
        (f"#{k} {p}", b, a)
        for p in prompts
        for k, (b, a) in enumerate(zip(images["before"][p], images["after"][p], strict=True))
    ]
    return {"flagged": prompts, "flagged_grid": write_grid(f"{stem}_flagged", rows)}
