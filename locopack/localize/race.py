"""Racing over windows: successive rounds at growing budgets, clear losers dropped.

Scoring every window at full settings costs windows x probes x seeds x steps denoiser passes
(61 windows on SD-XL).  The race scores every window at a cheap budget (a fifth of the steps,
every probe, the fewest seeds that give :data:`MIN_SAMPLES` samples), then re-scores only the
windows whose objective is *not clearly worse* than the best one at more steps, and ends with
at most :data:`FINAL_KEEP` windows at full settings; the chosen window is the best of that last
round.

Every round draws every probe.  Windows that overlap the right one can differ mainly on one
probe (the one whose attribute those few sites carry); a round that screened a subset of the
probes could drop full mode's choice on the probes it did not draw, and it did on planted
twins.  Cheapness comes from steps and seeds, never from probes: with one seed the first round
costs a fifth of a full sweep and the race saves about 3.5x; SD-XL's 61 windows at 4 probes x 4
seeds and 10 steps take 1,888 passes at most, 10.3x fewer than full mode's 19,520.

"Clearly worse" is a confidence bound on paired differences: every window of a round sees the
same probes and seeds, so for window ``i`` and the round's best window ``b`` the per-sample
differences ``d = sign*score_i - sign*score_b`` cancel what probes and seeds share; ``i`` is
dropped when ``mean(d) - Z * sd(d) / sqrt(k) > 0``, and never on fewer than
:data:`MIN_SAMPLES` samples: from two, ``sd(d)`` has one degree of freedom and is often near
zero, so a bound from two samples drops windows on chance.  A window indistinguishable from the
best is kept however many there are, except that each round may spend at most :data:`SPEND`
of what the round before it could, when more windows survive the best by mean go on.
Successive halving (Jamieson & Talwalkar 2016) gives every round the same budget; shrinking it
instead bounds the whole race at 4/3 of its first round plus the finalists, whatever the
number of rounds.  The first round, which sees every probe, holds most of the evidence;
later rounds sort out, among the few close windows, what more steps change.

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
#: estimate of the image, which ranks windows poorly); every round draws every probe
STEP_FRACTIONS = (0.2, 0.5)
MIN_STEPS = 2
#: no window is dropped on fewer probe x seed samples than this (module docstring)
MIN_SAMPLES = 3
#: a window is clearly worse when its mean difference to the best exceeds Z standard errors
Z = 2.0
#: each round may spend at most this share of what the round before it could
SPEND = 0.25


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


def budgets(steps: int, probes: int, seeds: int) -> list[Budget]:
    """The race's rounds for a full setting, cheapest first, the full budget last.  Every
    round draws every probe; the screening rounds use the fewest seeds that give
    :data:`MIN_SAMPLES` samples (or all of them).  Only the full budget when no screening
    round would cost at most half of it, or the full budget holds a single sample."""
    full = Budget(steps, tuple(range(probes)), seeds)
    used_seeds = min(seeds, math.ceil(MIN_SAMPLES / probes))
    rounds = []
    for fraction in STEP_FRACTIONS:
        budget = Budget(screening_steps(steps, fraction), full.probes, used_seeds)
        cheap = budget.cost(steps, probes, seeds) <= 0.5 and probes * seeds > 1
        if cheap and budget not in rounds:
            rounds.append(budget)
    return [*rounds, full]


def clearly_worse(samples: np.ndarray) -> np.ndarray:
    """For a (windows x samples) matrix of ``sign * score`` (lower is better), which windows
    are clearly worse than the one with the lowest mean (paired bound, module docstring)."""
    samples = np.asarray(samples, dtype=np.float64)
    k = samples.shape[1]
    best = int(np.argmin(samples.mean(axis=1)))
    diff = samples - samples[best]
    if k < MIN_SAMPLES:
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
    """The most windows each round may score: all in the first, then as many as
    :data:`SPEND` of the previous round's allowance buys at the round's budget,
    :data:`FINAL_KEEP` at full settings."""
    allowance = windows * rounds[0].cost(steps, probes, seeds)
    caps = [windows]
    for budget in rounds[1:]:
        allowance *= SPEND
        cap = max(FINAL_KEEP, int(allowance / budget.cost(steps, probes, seeds)))
        caps.append(min(caps[-1], cap))
    caps[-1] = min(caps[-1], FINAL_KEEP) if len(rounds) > 1 else windows
    return caps
