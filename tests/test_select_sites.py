"""``localize.select: editable``: the sets of sites tried, the checks, the trail on disk."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from locopack.errors import RecipeError
from locopack.localize import Candidate, LocalizationResult, localize, prompt_pairs
from locopack.localize.editable import TrailStep, nested_sets, ranking, smallest_meeting
from locopack.localize.planted import ReferenceScorer
from locopack.models import load_pipeline
from locopack.pipeline.select_sites import CLIP_SHARE, judges, select_sites, trail_table
from locopack.recipe import parse_recipe

RECIPE = """
version: 1
name: two-windows
base: {{model: {model}}}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting of a cat in the style of {{concept}}", "{{concept}} starry night"]
    target: "a photo of a red car"
    # on a random twin LocoEdit at every site goes 86% of the CLIP way to the anchor's images
    requirements: {{concept_left: 0.15}}
localize: {{window: 2, steps: 2, guidance: 3.0, seeds: [0], scorer: ./unused, mode: full,
           select: {select}}}
edit: {{tokens: all}}
"""


def _result(objectives, window=2, sites=8, rounds=None):
    candidates = [SimpleNamespace(objective=o) for o in objectives]
    chosen = min(range(len(objectives)), key=lambda i: objectives[i])
    return SimpleNamespace(
        candidates=candidates,
        chosen=chosen,
        rounds=rounds,
        window=window,
        site_paths=[f"s{i}" for i in range(sites)],
    )


def test_sets_grow_from_the_chosen_window_by_the_ranking_up_to_every_site():
    # windows of 2 over 8 sites; best 5 (sites 5-6), then 1 (a distant window), then 4
    result = _result([9, 2, 8, 7, 3, 1, 6])
    assert ranking(result)[:3] == [5, 1, 4]
    sets = nested_sets(result)
    assert sets[0] == ([5, 6], 5)
    assert sets[1] == ([1, 2, 5, 6], 1)  # united with a disjoint window
    assert sets[2] == ([1, 2, 4, 5, 6], 4)  # grown in network order
    assert sets[-1][0] == list(range(8))
    assert all(set(a[0]) < set(b[0]) for a, b in zip(sets, sets[1:], strict=False))


def test_a_race_ranks_the_windows_that_went_further_first():
    rounds = [SimpleNamespace(windows=[0, 1, 2, 3]), SimpleNamespace(windows=[2, 3])]
    result = _result([5, 1, 4, 6], rounds=rounds)
    result.chosen = 2  # the race's winner, though window 1 has the lowest early score
    assert ranking(result) == [2, 3, 1, 0]


@pytest.mark.parametrize("first", [0, 1, 2, 5, 9, None])
def test_smallest_meeting_finds_the_first_success_with_few_checks(first):
    asked = []

    def meets(i):
        asked.append(i)
        return first is not None and i >= first

    assert smallest_meeting(10, meets) == first
    assert len(asked) == len(set(asked)) <= 8


def _plant_two(pipe, family, windows):
    """Key/value zeroed at every site outside ``windows`` (each ``(start, size)``)."""
    denoiser = getattr(pipe, family.denoiser_attr)
    sites = family.sites(denoiser)
    kept = {i for start, size in windows for i in range(start, start + size)}
    with torch.no_grad():
        for i, site in enumerate(sites):
            if i not in kept:
                denoiser.get_submodule(site.key).weight.zero_()
                denoiser.get_submodule(site.value).weight.zero_()
    return [s.path for s in sites]


def test_editable_widens_to_both_planted_windows_where_score_keeps_one(twin_dirs):
    pipe, family = load_pipeline(str(twin_dirs["sd1"]))
    pipe.set_progress_bar_config(disable=True)
    paths = _plant_two(pipe, family, [(3, 2), (10, 2)])
    recipe = parse_recipe(RECIPE.format(model=twin_dirs["sd1"], select="editable"), "two.yaml")
    originals = [p.original for p in prompt_pairs(recipe)]
    scorer = ReferenceScorer(pipe, family, originals, steps=2, guidance=3.0)
    result = localize(pipe, family, recipe, scorer=scorer, progress=False)
    window = result.layers
    assert window in (paths[3:5], paths[10:12])  # score alone: one of the two
    assert judges(recipe, scorer) == [(CLIP_SHARE, None)]
    chosen = select_sites(pipe, family, recipe, result, scorer)
    # widened to both, then pruned of what the requirement does not need
    assert chosen.select == "editable" and set(chosen.layers) == set(paths[3:5] + paths[10:12])
    first = chosen.trail[0]
    assert not first.met and first.sites == window
    left = [c for c in first.checks if c["requirement"] == "concept_left"]
    assert left and left[0]["measured"] > left[0]["threshold"] == 0.15
    assert any(s.met and s.sites == chosen.layers for s in chosen.trail)
    # the trail goes to localization.json, the card's table and back
    data = json.loads(json.dumps(chosen.to_dict()))
    assert data["chosen_layers"] == chosen.layers and data["check"]["seeds"] == [0, 1, 2, 3]
    table = trail_table(LocalizationResult.parse(data, "localization.json"))
    assert (
        f"{len(chosen.layers)} of 16 sites were edited" in table
        and table.count("\n| ") == len(chosen.trail) + 1
    )


def test_score_selection_writes_no_trail_and_older_files_still_load(tmp_path):
    line = Candidate.from_scores(["a"], [1.0], [1])
    result = LocalizationResult(
        candidates=[line, Candidate.from_scores(["b"], [0.5], [1])],
        chosen=1,
        baseline=line,
        all_sites=line,
        finalists=[1],
        rung={},
        mode="full",
        window=1,
        site_paths=["a", "b"],
        pairs=[],
    )
    result.save(tmp_path)
    old = json.loads((tmp_path / "localization.json").read_text())
    for key in ("select", "trail", "check", "selected"):
        old.pop(key)  # a file written before the editable selection existed
    (tmp_path / "localization.json").write_text(json.dumps(old))
    loaded = LocalizationResult.load(tmp_path / "localization.json")
    assert loaded.select == "score" and loaded.trail is None and loaded.layers == ["b"]
    result.select, result.selected = "editable", ["a", "b"]
    result.trail = [TrailStep(["b"], 1, [], False), TrailStep(["a", "b"], None, [], True)]
    result.save(tmp_path)
    again = LocalizationResult.load(tmp_path / "localization.json")
    assert again.layers == ["a", "b"] and again.trail == result.trail


def test_select_accepts_score_or_editable_only(twin_dirs):
    text = RECIPE.format(model="./m", select="best")
    with pytest.raises(RecipeError, match="localize.select") as err:
        parse_recipe(text, "r.yaml")
    assert "score" in str(err.value) and "editable" in str(err.value)
    assert parse_recipe(RECIPE.format(model="./m", select="score"), "r.yaml").localize.select


def test_a_toy_recipe_is_checked_by_its_rate_detector():
    recipe = parse_recipe(
        RECIPE.format(model="./m", select="editable") + "evidence: {detectors: [clip, toy]}\n",
        "r.yaml",
    )
    assert [name for name, _ in judges(recipe, scorer=None)] == ["toy"]
