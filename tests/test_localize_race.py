"""The race's logic on score matrices, its rounds and caps, and the plan of a sweep's cost."""

from __future__ import annotations

import numpy as np
import pytest

from locopack.localize import PromptPair, Rung, SweepMode, passes, plan_sweep, run_sweep
from locopack.localize.race import (
    FINAL_KEEP,
    MIN_RACE_WINDOWS,
    SPEND,
    budgets,
    clearly_worse,
    round_caps,
    survivors,
)
from locopack.localize.result import Candidate
from locopack.localize.run import ladder, reference_rung
from locopack.models import get_family
from locopack.recipe import parse_recipe


def test_a_clearly_worse_window_is_dropped_and_an_indistinguishable_one_kept():
    rng = np.random.default_rng(0)
    probe = rng.normal(0, 1, 8)  # what the probes share: cancels in paired differences
    best = probe - 1.0
    noise = rng.normal(0, 0.05, 4)
    twin = best + np.concatenate([noise, -noise])  # the same mean, another spread
    worse = probe + 0.5 + rng.normal(0, 0.05, 8)
    assert clearly_worse(np.stack([best, twin, worse])).tolist() == [False, False, True]
    assert survivors(np.stack([worse, best, twin]), cap=5) == [1, 2]


def test_an_unpaired_spread_would_hide_the_difference():
    # the windows differ by 0.3 on every probe while probes differ by 1: paired, it is clear
    probe = np.linspace(-2, 2, 6)
    assert clearly_worse(np.stack([probe, probe + 0.3])).tolist() == [False, True]


def test_the_cap_keeps_the_best_by_mean_and_one_sample_drops_nothing():
    same = np.zeros((5, 4)) + np.array([0.0, 1.0, 0.0, 1.0])
    same[3] += [-0.11, 0.09, -0.11, 0.09]  # indistinguishable from the others, best by mean
    assert survivors(same, cap=2) == [0, 3]
    assert not clearly_worse(np.array([[0.0], [5.0]])).any()


def test_two_samples_drop_nothing():
    # two probes on which the second window is worse by almost the same amount: the spread of
    # the differences is near zero, so a two-sample bound would call it clearly worse
    assert not clearly_worse(np.array([[0.0, 0.0], [0.20, 0.21]])).any()
    assert clearly_worse(np.array([[0.0, 0.0, 0.0], [0.20, 0.21, 0.22]])).tolist() == [0, 1]


def test_rounds_grow_to_the_full_budget_and_every_round_draws_every_probe():
    rounds = budgets(steps=20, probes=4, seeds=2)
    assert [(b.steps, b.probes, b.seeds) for b in rounds] == [
        (4, (0, 1, 2, 3), 1),
        (10, (0, 1, 2, 3), 1),
        (20, (0, 1, 2, 3), 2),
    ]
    costs = [b.cost(20, 4, 2) for b in rounds]
    assert costs == sorted(costs) and costs[-1] == 1
    # with two probes, two seeds make the three samples a window may be dropped on
    assert [(b.probes, b.seeds) for b in budgets(10, 2, 4)[:-1]] == [((0, 1), 2)] * 2


def test_too_few_steps_or_samples_screen_nothing():
    assert len(budgets(steps=2, probes=2, seeds=1)) == 1
    assert len(budgets(steps=20, probes=1, seeds=1)) == 1


def test_few_windows_are_never_screened():
    rung = Rung(20, 4.0, (0,), None)
    assert len(ladder(SweepMode.FAST, MIN_RACE_WINDOWS - 1, rung, 4)) == 1
    assert len(ladder(SweepMode.FAST, MIN_RACE_WINDOWS, rung, 4)) > 1
    assert len(ladder("full", 100, rung, 4)) == 1


def test_each_round_spends_at_most_a_share_of_the_round_before():
    rounds = budgets(steps=50, probes=10, seeds=4)
    caps = round_caps(61, rounds, 50, 10, 4)
    spend = [cap * b.cost(50, 10, 4) for cap, b in zip(caps, rounds, strict=True)]
    assert caps[0] == 61 and caps[-1] == FINAL_KEEP and len(rounds) == 3
    assert all(s <= spend[0] * SPEND**r + 1e-9 for r, s in enumerate(spend[:-1]))
    assert sum(spend[:-1]) <= spend[0] / (1 - SPEND)


class ProbeSweep:
    """A stand-in for :class:`~locopack.localize.sweep.Sweep` whose scores come from a table:
    every window scores 0 on every probe, except window 5, which controls the attribute of
    probe 1 alone, and window 6, a little better than the rest on every probe.  Lower is
    better (erase probes), more steps sharpen every effect."""

    site_paths = [f"site.{i}" for i in range(12)]
    pairs = [PromptPair(f"a {k}", f"b {k}", f"a {k}", +1) for k in range(4)]
    pooled_window = None

    def value(self, window: list[str], probe: int, seed: int, steps: int) -> float:
        site = int(window[0].split(".")[1]) if len(window) == 1 else -1
        effect = {5: (0.1, -3.0, 0.1, 0.1), 6: (-0.2, -0.2, -0.21, -0.2)}.get(site, (0,) * 4)
        return effect[probe] * (1 + steps / 10) + 0.001 * seed

    def score(self, windows, rung, label="", probes=None):
        probes = range(len(self.pairs)) if probes is None else probes
        return [
            Candidate.from_scores(
                window,
                [self.value(window, k, seed, rung.steps) for k in probes for seed in rung.seeds],
                [self.pairs[k].sign for k in probes for _ in rung.seeds],
            )
            for window in windows
        ]


def test_the_race_keeps_the_window_that_differs_on_one_probe():
    rung = Rung(10, 4.0, (0, 1, 2, 3), None)
    full = run_sweep(ProbeSweep(), 1, rung, SweepMode.FULL)
    fast = run_sweep(ProbeSweep(), 1, rung, SweepMode.FAST)
    assert full.chosen == 5
    assert fast.rounds[0].probes == [0, 1, 2, 3]  # the decisive probe 1 is screened
    assert fast.chosen == full.chosen and 5 in fast.finalists


def test_modes_accept_their_names():
    assert SweepMode("fast") is SweepMode.FAST and SweepMode("full") is SweepMode.FULL
    with pytest.raises(ValueError):
        SweepMode("quick")


def test_cheap_reference_lines_unless_full_ones_are_asked_for():
    rung = Rung(20, 4.0, (0, 1), None)
    assert reference_rung(rung, full=True) == rung
    assert reference_rung(rung) == Rung(4, 4.0, (0,), None)


RECIPE = """
version: 1
name: plan
base: {{model: ./m}}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a {{concept}}", "b {{concept}}", "c {{concept}}", "d {{concept}}"]
    target: "a cat"
localize: {{window: {window}, steps: 50, guidance: 7.5, seeds: [0], prompts_per_edit: 4,
           mode: fast}}
"""


def test_the_plan_counts_passes_from_the_configs():
    recipe = parse_recipe(RECIPE.format(window=10), "plan.yaml")
    sdxl = get_family("sdxl")
    plan = plan_sweep(recipe, sdxl, 70, seconds_per_pass=0.5)
    full_refs = 2 * passes(sdxl, 1, 4, Rung(10, 7.5, (0,), None))
    assert plan.windows == 61
    assert plan.full_passes == 61 * 4 * 50 * 2 + full_refs
    # one seed: the race's first round draws every probe at a fifth of the steps
    assert plan.full_passes / 4 < plan.mode_passes < plan.full_passes / 3
    assert "61 windows" in str(plan) and "about" in str(plan)
    small = plan_sweep(parse_recipe(RECIPE.format(window=4), "plan.yaml"), sdxl, 7)
    assert small.mode_passes == small.full_passes
    assert plan_sweep(recipe, sdxl, 70, "full").ratio == 1
