"""What a sweep will cost, from the recipe and the model's site count alone.

A denoiser pass is one image through one denoising step; classifier-free guidance (CFG > 1)
doubles it, as the paper's loop pays it too.  Full mode costs
``windows x probes x seeds x steps`` of them; the race's cost depends on the scores, so the
plan gives its most (every round at its cap).  With one timed pass the passes become seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from .race import round_caps
from .run import SweepMode, ladder, reference_rung
from .sweep import Rung


def passes(windows: int, probes: int, rung: Rung) -> int:
    """Denoiser passes of scoring ``windows`` windows on ``probes`` probes at ``rung``."""
    return windows * probes * len(rung.seeds) * rung.steps * (2 if rung.guidance > 1 else 1)


@dataclass(frozen=True)
class SweepPlan:
    """Denoiser passes of full mode and of the chosen mode (at most), reference lines
    included, and the estimated seconds when a pass was timed."""

    mode: SweepMode
    windows: int
    full_passes: int
    mode_passes: int
    seconds_per_pass: float | None = None

    @property
    def ratio(self) -> float:
        """How many times fewer passes the chosen mode needs (at least)."""
        return self.full_passes / self.mode_passes

    def __str__(self) -> str:
        def line(name: str, count: int) -> str:
            eta = f", about {count * self.seconds_per_pass:,.0f} s" if self.seconds_per_pass else ""
            return f"{name:>5}: {count:,} denoiser passes{eta}"

        return "\n".join(
            [
                f"{self.windows} windows",
                line("full", self.full_passes),
                line(self.mode.value, self.mode_passes)
                + (
                    f" at most ({self.ratio:.1f}x fewer)"
                    if self.mode_passes < self.full_passes
                    else ""
                ),
            ]
        )


def plan_sweep(
    recipe: Any,
    site_count: int,
    mode: SweepMode | str | None = None,
    *,
    full_references: bool = False,
    seconds_per_pass: float | None = None,
) -> SweepPlan:
    """The cost of localizing ``recipe`` on a model with ``site_count`` sites.

    Args:
        recipe: the loaded recipe (window, probes, steps, guidance, seeds, mode).
        site_count: the model's sites (``locopack layers`` lists them from the config).
        mode: overrides the recipe's ``localize.mode``.
        full_references: the reference lines at full settings (as :func:`run_sweep`).
        seconds_per_pass: from :func:`time_denoiser_pass`, for a time estimate.
    """
    from .windows import candidate_windows, prompt_pairs

    settings = recipe.localize
    mode = SweepMode(mode or settings.mode)
    windows = len(candidate_windows([str(i) for i in range(site_count)], settings.window))
    probes = len(prompt_pairs(recipe))
    rung = Rung(settings.steps, settings.guidance, tuple(settings.seeds), settings.resolution)
    refs = 2 * passes(1, probes, reference_rung(rung, full_references))

    def cost(chosen: SweepMode) -> int:
        rounds = ladder(chosen, windows, rung, probes)
        caps = round_caps(windows, rounds, rung.steps, probes, len(rung.seeds))
        return refs + sum(
            passes(cap, len(b.probes), Rung(b.steps, rung.guidance, rung.seeds[: b.seeds], None))
            for b, cap in zip(rounds, caps, strict=True)
        )

    return SweepPlan(mode, windows, cost(SweepMode.FULL), cost(mode), seconds_per_pass)


@torch.no_grad()
def time_denoiser_pass(pipe: Any, family: Any, resolution: int | None = None) -> float:
    """Seconds of one denoiser pass on the pipeline's device: a one-step generation with CFG,
    timed after a warm-up, halved (it runs two passes)."""
    size = {"height": resolution, "width": resolution} if resolution else {}
    kwargs = dict(num_inference_steps=1, guidance_scale=2.0, output_type="latent", **size)
    pipe("a photo", **kwargs, **family.call_kwargs())
    start = time.perf_counter()
    pipe("a photo", **kwargs, **family.call_kwargs())
    return (time.perf_counter() - start) / 2
