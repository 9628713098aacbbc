"""Racing over windows: successive rounds at growing budgets, clear losers dropped.

Scoring every window at full settings costs windows x probes x seeds x steps denoiser passes
(61 windows on SD-XL).  The race scores every window at a cheap budget (a fifth of the steps,
two probe/seed samples), then re-scores only the windows whose objective is *not clearly
worse* than the best one at a growing budget, and ends with at most :data:`FINAL_KEEP` windows
at full settings; the chosen window is the best of that last round.

"Clearly worse" is a confidence bound on paired differences: every window of a round sees the
same probes and seeds, so for window ``i`` and the round's best window ``b`` the per-sample
differences ``d = sign*score_i - sign*score_b`` cancel what probes and seeds share; ``i`` is
dropped when ``mean(d) - Z * sd(d) / sqrt(k) > 0``.  A window indistinguishable from the best
is kept however many there are, except that each round may spend at most half of what the
round before it could, when more windows survive the best by mean go on.  Successive halving
(Jamieson & Talwalkar 2016) gives every round the same budget; halving it instead bounds the
whole race at twice its first round plus the finalists, whatever the number of rounds, and
with the few samples of an early round the bound drops few windows, so an equal budget would
let the cap, not the evidence, decide how many go on at several times the cost.

The bound covers the spread over probes and seeds, not the bias of fewer steps: a window can
rank lower at 4 steps than at 20.  With fewer than :data:`MIN_RACE_WINDOWS` windows the race
is not run (full settings for every window): the saving would be small and the risk of a
different choice is not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: fewer windows than this are all scored at full settings
MIN_RACE_WINDOWS = 8
#: windows scored at full settings at the end of a race (at most)
FINAL_KEEP = 2
#: share of the steps in the screening rounds, at least MIN_STEPS (one step scores the first
#: estimate of the image, which ranks windows poorly); samples (probe x seed) double every round
STEP_FRACTIONS = (0.2, 0.5)
MIN_STEPS = 2
FIRST_SAMPLES = 2
#: a window is clearly worse when its mean difference to the best exceeds Z standard errors
Z = 2.0


@dataclass(frozen=True)
class Budget:
    """What one round spends per window: ``steps`` denoising steps for each of ``probes``
    (indices into the sweep's probes) and the first ``seeds`` seeds."""

    steps: int
    probes: tuple[int, ...]
    seeds: int

    def cost(self, steps: int, probes: int, seeds: int) -> float:
        """This budget as a fraction of the full one (``steps`` x ``probes`` x ``seeds``)."""
        return (self.steps * len(self.probes) * self.seeds) / (steps * probes * seeds)


def step_counts(steps: int) -> list[int]:
    """Every step count a sweep with ``steps`` full steps generates with."""
    return sorted({screening_steps(steps, f) for f in STEP_FRACTIONS} | {steps})


def screening_steps(steps: int, fraction: float) -> int:
    """Steps of a screening round at ``fraction`` of ``steps`` (never more than ``steps``)."""
    return min(steps, max(MIN_STEPS, math.ceil(steps * fraction)))


def spread(count: int, total: int) -> tuple[int, ...]:
    """``count`` probe indices spread evenly over ``total`` (so every edit of a joint recipe
    is represented: its probes are consecutive)."""
    return tuple(i * total // count for i in range(count))


def budgets(steps: int, probes: int, seeds: int) -> list[Budget]:
    """The race's rounds for a full setting, cheapest first, the full budget last; only the
    full budget when no screening round would be cheaper than half of it or fewer than two
    samples make a round (no spread can be estimated from one)."""
    full = Budget(steps, tuple(range(probes)), seeds)
    rounds, samples = [], FIRST_SAMPLES
    for fraction in STEP_FRACTIONS:
        k = min(samples, probes * seeds)
        used_seeds = min(seeds, math.ceil(k / probes))
        budget = Budget(
            screening_steps(steps, fraction),
            spread(min(probes, math.ceil(k / used_seeds)), probes),
            used_seeds,
        )
        if budget.cost(steps, probes, seeds) < 0.5 and k >= 2 and budget not in rounds:
            rounds.append(budget)
        samples *= 2
    return [*rounds, full]


def clearly_worse(samples: np.ndarray) -> np.ndarray:
    """For a (windows x samples) matrix of ``sign * score`` (lower is better), which windows
    are clearly worse than the one with the lowest mean (paired bound, module docstring)."""
    samples = np.asarray(samples, dtype=np.float64)
    k = samples.shape[1]
    best = int(np.argmin(samples.mean(axis=1)))
    diff = samples - samples[best]
    if k < 2:
        return np.zeros(len(samples), dtype=bool)
    bound = diff.mean(axis=1) - Z * diff.std(axis=1, ddof=1) / math.sqrt(k)
    return bound > 0


def survivors(samples: np.ndarray, cap: int) -> list[int]:
    """Row indices that go on to the next round: those not clearly worse than the best, at
    most ``cap`` of them (the best by mean, ties to the lower index), in index order."""
    samples = np.asarray(samples, dtype=np.float64)
    means = samples.mean(axis=1)
    kept = [i for i in np.flatnonzero(~clearly_worse(samples))]
    kept.sort(key=lambda i: (means[i], i))
    return sorted(int(i) for i in kept[: max(1, cap)])


def round_caps(windows: int, rounds: list[Budget], steps: int, probes: int, seeds: int):
    """The most windows each round may score: all in the first, then as many as half the
    previous round's allowance buys at the round's budget, :data:`FINAL_KEEP` at full
    settings."""
    allowance = windows * rounds[0].cost(steps, probes, seeds)
    caps = [windows]
    for budget in rounds[1:]:
        allowance /= 2
        cap = max(FINAL_KEEP, int(allowance / budget.cost(steps, probes, seeds)))
        caps.append(min(caps[-1], cap))
    caps[-1] = min(caps[-1], FINAL_KEEP) if len(rounds) > 1 else windows
    return caps
