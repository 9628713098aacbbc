"""What a sweep will cost, from the recipe and the model's site count alone.

A denoiser pass is one image through one denoising step; classifier-free guidance (CFG > 1)
doubles it, as the paper's loop pays it too.  Full mode costs
``windows x probes x seeds x steps`` of them; the race's cost depends on the scores, so the
plan gives its most (every round at its cap).  With one timed pass the passes become seconds.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .race import round_caps
from .run import SweepMode, ladder, reference_rung
from .sweep import Rung

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

    from ..models.base import ModelFamily
    from ..models.loaded import LoadedBase
    from ..recipe.schema import Recipe


def denoiser_steps(scheduler: SchedulerMixin | None, steps: int) -> int:
    """How many times a pipeline with ``scheduler`` calls its denoiser in a ``steps``-step run
    (PNDM's warm-up and Heun's second-order steps call it more often); ``steps`` without a
    scheduler, or where its timesteps need more than the step count (FLUX's shift)."""
    if scheduler is None:
        return steps
    scheduler = copy.deepcopy(scheduler)
    try:
        scheduler.set_timesteps(steps)
    except (TypeError, ValueError):
        return steps
    return len(scheduler.timesteps)


def passes(
    family: type[ModelFamily],
    images: int,
    probes: int,
    rung: Rung,
    swapped: bool = True,
    scheduler: SchedulerMixin | None = None,
) -> int:
    """Denoiser passes of drawing ``images`` images on each of ``probes`` probes at ``rung``
    (:meth:`~locopack.models.ModelFamily.denoiser_passes` per denoiser call, the calls
    :func:`denoiser_steps` counts); ``swapped``: some site is altered in every call."""
    per_step = family.denoiser_passes(images, rung.guidance, swapped)
    return probes * len(rung.seeds) * denoiser_steps(scheduler, rung.steps) * per_step


def reference_passes(
    family: type[ModelFamily],
    probes: int,
    rung: Rung,
    batch: int,
    scheduler: SchedulerMixin | None,
) -> int:
    """Denoiser passes of the reference lines (none altered, every site altered, and the
    pooled path alone where the family can swap it), drawn in blocks of ``batch`` as
    :meth:`~locopack.localize.sweep.Sweep.score` draws them: a block that alters a site
    pays for it on every image it holds."""
    lines, batch = [False, True] + ([False] if family.pooled_reference else []), max(1, batch)
    blocks = [lines[start : start + batch] for start in range(0, len(lines), batch)]
    return sum(passes(family, len(block), probes, rung, any(block), scheduler) for block in blocks)


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
    recipe: Recipe,
    family: type[ModelFamily],
    site_count: int,
    mode: SweepMode | str | None = None,
    *,
    full_references: bool = False,
    batch: int = 8,
    scheduler: SchedulerMixin | None = None,
    seconds_per_pass: float | None = None,
) -> SweepPlan:
    """The cost of localizing ``recipe`` on a model of ``family`` with ``site_count`` sites.

    Args:
        recipe: the loaded recipe (window, probes, steps, guidance, seeds, mode).
        family: the model's family: how many passes a step costs (guidance, the text
            stream a joint-attention transformer runs alongside).
        site_count: the model's sites (``locopack layers`` lists them from the config).
        mode: overrides the recipe's ``localize.mode``.
        full_references: the reference lines at full settings (as :func:`run_sweep`).
        batch: windows per denoiser call (``localize --batch``).
        scheduler: the pipeline's scheduler (from its config), for :func:`denoiser_steps`.
        seconds_per_pass: from :func:`time_denoiser_pass`, for a time estimate.
    """
    from .windows import candidate_windows, prompt_pairs

    settings = recipe.localize
    mode = SweepMode(mode or settings.mode)
    windows = len(candidate_windows([str(i) for i in range(site_count)], settings.window))
    probes = len(prompt_pairs(recipe))
    rung = Rung(settings.steps, settings.guidance, tuple(settings.seeds), settings.resolution)
    references = reference_rung(rung, full_references)
    refs = reference_passes(family, probes, references, batch, scheduler)

    def cost(chosen: SweepMode) -> int:
        rounds = ladder(chosen, windows, rung, probes)
        caps = round_caps(windows, rounds, rung.steps, probes, len(rung.seeds))
        return refs + sum(
            passes(
                family,
                cap,
                len(b.probes),
                Rung(b.steps, rung.guidance, rung.seeds[: b.seeds], None),
                scheduler=scheduler,
            )
            for b, cap in zip(rounds, caps, strict=True)
        )

    return SweepPlan(mode, windows, cost(SweepMode.FULL), cost(mode), seconds_per_pass)


@torch.no_grad()
def time_denoiser_pass(base: LoadedBase, resolution: int | None = None) -> float:
    """Seconds of one denoiser pass of ``base`` on its device: a one-step generation at
    guidance 2, timed after a warm-up, divided by the passes it runs."""
    pipe, family = base.pipe, base.family
    size = {"height": resolution, "width": resolution} if resolution else {}
    kwargs = dict(num_inference_steps=1, guidance_scale=2.0, output_type="latent", **size)
    pipe("a photo", **kwargs, **family.call_kwargs())
    start = time.perf_counter()
    pipe("a photo", **kwargs, **family.call_kwargs())
    return (time.perf_counter() - start) / family.denoiser_passes(1, 2.0, False)
