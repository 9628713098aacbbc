"""The race's logic on score matrices, its rounds and caps, and the plan of a sweep's cost."""

from __future__ import annotations

import numpy as np
import pytest

from locopack.localize import Rung, SweepMode, passes, plan_sweep
from locopack.localize.race import (
    FINAL_KEEP,
    MIN_RACE_WINDOWS,
    budgets,
    clearly_worse,
    round_caps,
    spread,
    survivors,
)
from locopack.localize.run import ladder, reference_rung
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


def test_rounds_grow_to_the_full_budget():
    rounds = budgets(steps=20, probes=4, seeds=2)
    assert [(b.steps, len(b.probes), b.seeds) for b in rounds] == [
        (4, 2, 1),
        (10, 4, 1),
        (20, 4, 2),
    ]
    costs = [b.cost(20, 4, 2) for b in rounds]
    assert costs == sorted(costs) and costs[-1] == 1
    assert spread(2, 8) == (0, 4)  # one probe of each of two edits of four


def test_too_few_steps_or_samples_screen_nothing():
    assert len(budgets(steps=2, probes=2, seeds=1)) == 1
    assert len(budgets(steps=20, probes=1, seeds=1)) == 1


def test_few_windows_are_never_screened():
    rung = Rung(20, 4.0, (0,), None)
    assert len(ladder(SweepMode.FAST, MIN_RACE_WINDOWS - 1, rung, 4)) == 1
    assert len(ladder(SweepMode.FAST, MIN_RACE_WINDOWS, rung, 4)) > 1
    assert len(ladder("full", 100, rung, 4)) == 1


def test_each_round_spends_at_most_half_the_round_before():
    rounds = budgets(steps=50, probes=10, seeds=1)
    caps = round_caps(61, rounds, 50, 10, 1)
    spend = [cap * b.cost(50, 10, 1) for cap, b in zip(caps, rounds, strict=True)]
    assert caps[0] == 61 and caps[-1] == FINAL_KEEP
    assert all(s <= spend[0] / 2**r + 1e-9 for r, s in enumerate(spend[:-1]))
    assert sum(spend[:-1]) <= 2 * spend[0]


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
    plan = plan_sweep(recipe, 70, seconds_per_pass=0.5)
    full_refs = 2 * passes(1, 4, Rung(10, 7.5, (0,), None))
    assert plan.windows == 61
    assert plan.full_passes == 61 * 4 * 50 * 2 + full_refs
    assert plan.mode_passes < plan.full_passes / 5
    assert "61 windows" in str(plan) and "about" in str(plan)
    small = plan_sweep(parse_recipe(RECIPE.format(window=4), "plan.yaml"), 7)
    assert small.mode_passes == small.full_passes
    assert plan_sweep(recipe, 70, "full").ratio == 1
