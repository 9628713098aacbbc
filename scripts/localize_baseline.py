"""The paper-style LocoGen loop and the measuring tools of ``bench_localize.py``.

The loop follows the official ``trace_attn_layer.py``: one pipeline call per candidate window,
probe and seed, the text encoded on every call, hooks swapping the window's key/value inputs.
Also: the probes of the twin benchmarks, a denoiser clock (passes and seconds), Spearman's rank
correlation, the 70-site SD-XL twin and the wall time of ``locopack --help``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from locopack.hooks.cross import swap_text_states, window_replacements
from locopack.localize import PromptPair
from locopack.models import get_family

#: ten probes, as many as the paper's sweep uses; ``--probes N`` takes the first N
PAIRS = [
    PromptPair(f"{subject} {by} van gogh", subject, f"{subject} {by} van gogh", +1)
    for subject, by in [
        ("a painting of a cat", "in the style of"),
        ("a portrait of a woman", "by"),
        ("sunflowers", "painted by"),
        ("a wheat field with crows", "by"),
        ("a cafe terrace at night", "by"),
        ("a bedroom with a wooden bed", "in the style of"),
        ("irises in a garden", "painted by"),
        ("a self portrait of a man", "by"),
        ("an almond tree in blossom", "in the style of"),
    ]
]
PAIRS.insert(1, PromptPair("van gogh starry night", "a starry night", "van gogh starry night", +1))


class DenoiserClock:
    """Accumulates wall time spent inside the denoiser's forward and the passes it ran (the
    batch size of every call)."""

    def __init__(self, denoiser):
        self.seconds, self.passes, self._start = 0.0, 0, 0.0
        denoiser.register_forward_pre_hook(self._enter)
        denoiser.register_forward_hook(self._leave)

    def reset(self):
        self.seconds, self.passes = 0.0, 0

    def _enter(self, _module, args):
        self.passes += int(args[0].shape[0])
        self._start = time.perf_counter()

    def _leave(self, *_):
        self.seconds += time.perf_counter() - self._start


def paper_loop(pipe, family, pairs, scorer, windows, rung):
    """One pipeline call per window, probe and seed; returns each window's objective per seed
    (windows x seeds)."""
    denoiser = getattr(pipe, family.denoiser_attr)
    sites = [s.path for s in family.sites(denoiser)]
    objectives = []
    for window in windows:
        values = np.zeros((len(pairs), len(rung.seeds)))
        for k, pair in enumerate(pairs):
            with torch.no_grad():
                original = family.encode(pipe, [pair.original])[0]
                altered = family.encode(pipe, [pair.altered])[0]
            for j, seed in enumerate(rung.seeds):
                replacements = window_replacements(sites, [window], original, altered)
                generator = torch.Generator().manual_seed(seed)
                with swap_text_states(denoiser, replacements):
                    image = pipe(
                        pair.original,
                        num_inference_steps=rung.steps,
                        guidance_scale=rung.guidance,
                        generator=generator,
                        output_type="pil",
                        **size(rung),
                        **family.call_kwargs(),
                    ).images[0]
                values[k, j] = pair.sign * scorer([image], [pair.reference])[0]
        objectives.append(values.mean(axis=0))
    return np.array(objectives)


def size(rung) -> dict:
    return {"height": rung.resolution, "width": rung.resolution} if rung.resolution else {}


def ranks(values) -> np.ndarray:
    """Ranks with ties (equal to 1e-6) sharing their mean rank."""
    values = np.round(np.asarray(values, dtype=float), 6)
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values))
    out[order] = np.arange(len(values))
    for value in np.unique(values):
        out[values == value] = out[values == value].mean()
    return out


def spearman(a, b) -> float:
    """Spearman rank correlation (ties share their mean rank; nan when one side is constant)."""
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def sdxl70(folder: Path) -> str:
    """The SD-XL twin with the real transformer depths (1, 2, 10): 70 sites, tiny widths."""
    from diffusers import UNet2DConditionModel

    pipe = get_family("sdxl").build_twin(0)
    torch.manual_seed(0)
    config = {**pipe.unet.config, "transformer_layers_per_block": (1, 2, 10)}
    pipe.register_modules(unet=UNet2DConditionModel.from_config(config))
    pipe.save_pretrained(folder)
    return str(folder)


def help_seconds() -> float:
    """Wall time of ``locopack --help`` in a fresh process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "locopack", "--help"], check=True, capture_output=True)
    return time.perf_counter() - t0
