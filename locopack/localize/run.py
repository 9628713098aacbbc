"""Run a sweep in a mode: every window at full settings, or a race (:mod:`.race`).

The reference lines (no site altered, every site altered, and in joint-attention transformers
the pooled text path alone) are scored at cheap settings unless
full ones are asked for: they are drawn beside the windows, they do not take part in the
choice.  Their cache key holds the model, scorer, probes and settings but no window size or
recipe, so one model and probe set computes them once.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from enum import Enum

import numpy as np

from .race import (
    MIN_RACE_WINDOWS,
    STEP_FRACTIONS,
    Budget,
    budgets,
    round_caps,
    screening_steps,
    survivors,
)
from .result import LocalizationResult, Round
from .sweep import Rung, Sweep
from .windows import candidate_windows


class SweepMode(str, Enum):
    """How many windows are scored at full settings.

    ``full``: every window (the paper's sweep).  ``fast``: a race, every window screened at
    a fraction of the steps on every probe, the ones not clearly worse than the best
    re-scored at more steps, at most two at full settings; with fewer than eight windows
    every window is scored at full settings, as in ``full``.
    """

    FULL = "full"
    FAST = "fast"


def ladder(mode: SweepMode | str, windows: int, rung: Rung, probes: int) -> list[Budget]:
    """The rounds a sweep of ``windows`` windows runs, the full budget last."""
    if SweepMode(mode) is SweepMode.FAST and windows >= MIN_RACE_WINDOWS:
        return budgets(rung.steps, probes, len(rung.seeds))
    return [Budget(rung.steps, tuple(range(probes)), len(rung.seeds))]


def reference_rung(rung: Rung, full: bool = False) -> Rung:
    """Settings of the reference lines: ``rung`` itself, or its first screening steps with
    its first seed."""
    if full:
        return rung
    steps = screening_steps(rung.steps, STEP_FRACTIONS[0])
    return Rung(steps, rung.guidance, rung.seeds[:1], rung.resolution)


def _signed(sweep: Sweep, budget: Budget, candidates) -> np.ndarray:
    signs = [sweep.pairs[k].sign for k in budget.probes for _ in range(budget.seeds)]
    return np.array([c.scores for c in candidates]) * np.array(signs)


def run_sweep(
    sweep: Sweep,
    window: int,
    rung: Rung,
    mode: SweepMode | str = SweepMode.FAST,
    *,
    full_references: bool = False,
    screen_resolution: int | None = None,
) -> LocalizationResult:
    """Score the windows of ``window`` sites and choose the one with the lowest objective.

    Args:
        sweep: the loaded scorer of windows.
        window, rung: the window size and the full generation settings.
        mode: a :class:`SweepMode` or its value.
        full_references: score the reference lines at ``rung`` instead of cheap settings.
        screen_resolution: generate the race's screening rounds at this resolution (a
            heuristic: a window's effect at low resolution need not be its effect at full
            resolution); None keeps ``rung.resolution``.
    """
    mode = SweepMode(mode)
    started, timings = time.perf_counter(), {}
    windows = candidate_windows(sweep.site_paths, window)
    rounds_of = ladder(mode, len(windows), rung, len(sweep.pairs))
    caps = round_caps(len(windows), rounds_of, rung.steps, len(sweep.pairs), len(rung.seeds))
    alive, rounds = list(range(len(windows))), []
    for r, budget in enumerate(rounds_of):
        last = r == len(rounds_of) - 1
        if not last and rounds and len(alive) <= caps[-1]:
            continue  # few enough are left for the full settings
        resolution = rung.resolution if last else (screen_resolution or rung.resolution)
        settings = Rung(budget.steps, rung.guidance, rung.seeds[: budget.seeds], resolution)
        label = "score windows" if last else f"race round {r + 1}"
        t0 = time.perf_counter()
        scored = sweep.score([windows[i] for i in alive], settings, label, budget.probes)
        timings["candidates" if last else f"round {r + 1}"] = time.perf_counter() - t0
        rounds.append(
            Round(
                rung=asdict(settings),
                probes=list(budget.probes),
                windows=list(alive),
                candidates=scored,
            )
        )
        if not last:
            kept = survivors(_signed(sweep, budget, scored), caps[r + 1])
            alive = [alive[j] for j in kept]
    t0 = time.perf_counter()
    refs = reference_rung(rung, full_references)
    lines = [[], list(sweep.site_paths)] + [w for w in [sweep.pooled_window] if w is not None]
    baseline, everything, *pooled = sweep.score(lines, refs, "reference lines")
    timings["references"] = time.perf_counter() - t0
    latest = {i: c for one in rounds for i, c in zip(one.windows, one.candidates, strict=True)}
    final = rounds[-1]
    best = min(final.windows, key=lambda i: (latest[i].objective, i))
    screened = len(rounds) > 1
    timings["total"] = time.perf_counter() - started
    return LocalizationResult(
        candidates=[latest[i] for i in range(len(windows))],
        chosen=best,
        baseline=baseline,
        all_sites=everything,
        pooled_only=pooled[0] if pooled else None,
        finalists=list(final.windows),
        screening_rung=rounds[0].rung if screened else None,
        screening=_screening(rounds, len(windows)) if screened else None,
        rounds=rounds if screened else None,
        reference_rung=asdict(refs),
        rung=asdict(rung),
        mode=mode.value,
        window=window,
        site_paths=list(sweep.site_paths),
        pairs=[asdict(p) for p in sweep.pairs],
        timings=timings,
    )


def _screening(rounds: list[Round], count: int):
    """Every window's scores in the last screening round it reached."""
    latest = {i: c for one in rounds[:-1] for i, c in zip(one.windows, one.candidates, strict=True)}
    return [latest[i] for i in range(count)]
