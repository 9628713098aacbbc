"""Requirements: stated in the recipe (with defaults by edit kind), checked by ``validate``, and
judged from the evidence alone into a verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from locopack.errors import RecipeError
from locopack.evidence.verdict import describe, judge
from locopack.recipe import load_recipe, parse_recipe
from locopack.recipe.checks import preflight
from locopack.release.card_verdict import verdict_line

ROOT = Path(__file__).resolve().parent.parent
STRIPES = ROOT / "recipes" / "toy" / "erase-stripes.yaml"
QUORVIA = ROOT / "recipes" / "toy-deep" / "update-quorvia.yaml"


def with_requirements(path: Path, text: str, where: str = "    held_out:") -> str:
    """The recipe at ``path`` with ``text`` (a requirements mapping) in its first edit."""
    source = path.read_text()
    assert source.count(where) == 1
    return source.replace(where, f"    requirements: {text}\n{where}")


def rates(after: float, before: float = 1.0, **extra) -> dict:
    return {"kind": "rate", "before": {"concept": before, **extra}, "after": {"concept": after}}


def evidence(
    edited: float, held_out: float, kept: float = 1.0, ssim=(0.9, 0.8), attack=None
) -> dict:
    """A minimal evidence.json for one edit, with the ``toy`` detector's rates."""

    def prompt_set(concept_after: float, prompt_after: float, change=(0.5,)):
        found = rates(concept_after, prompt=1.0)
        found["after"]["prompt"] = prompt_after
        return {"detectors": {"clip": {"kind": "score"}, "toy": found}, "change": {"ssim": change}}

    sets = {
        "edited": prompt_set(edited, 0.0),
        "held_out": prompt_set(held_out, 0.0),
        "preserve": prompt_set(0.0, kept, ssim),
        "unrelated": prompt_set(0.0, 1.0, (0.95,)),
    }
    sets["edited"]["detectors"]["toy"]["after"]["target"] = 1.0
    runs = [] if attack is None else [{"edit": 0, "searches": {"edited": {"success": attack}}}]
    return {"edits": [{"sets": sets}], "attack": {"edits": runs, "skipped": []}}


def test_defaults_by_kind_meet_a_good_erase():
    recipe = load_recipe(STRIPES)
    section = judge(recipe, evidence(0.0, 0.05))
    assert section["met"] and section["unmet"] == []
    names = {(i["requirement"], i["set"]) for i in section["items"]}
    assert names == {
        ("concept_left", "edited"),
        ("concept_left", "held_out"),
        ("prompt_kept", "preserve"),
        ("prompt_kept", "unrelated"),
        ("ssim", "preserve"),
        ("ssim", "unrelated"),
    }  # no new fact for an erase; the attack bar only when stated
    assert verdict_line(section).startswith("**Meets its requirements** (6 checks")


def test_a_missed_requirement_is_named_with_its_figures():
    section = judge(load_recipe(STRIPES), evidence(0.0, 0.58, kept=0.75, ssim=(0.5, 0.4)))
    assert not section["met"]
    assert section["unmet"] == [
        "held-out efficacy (stripes): 58% > 10%",
        "preserve prompts kept (stripes): lost 25 points > 10 points",
        "preserve SSIM (stripes): 0.450 < 0.600",
    ]
    assert verdict_line(section).startswith("**Does not meet its requirements**: held-out")


def test_stated_thresholds_replace_defaults_and_false_turns_one_off():
    text = with_requirements(STRIPES, "{concept_left: 0.6, ssim: false, attack_success: 0.1}")
    recipe = parse_recipe(text, str(STRIPES))
    section = judge(recipe, evidence(0.5, 0.58, ssim=(0.1,), attack={"after": 0.25}))
    assert [describe(i) for i in section["items"] if i["requirement"] == "ssim"] == []
    assert section["unmet"] == ["attack success (stripes): 25% > 10%"]


def test_a_stated_requirement_that_cannot_be_judged_is_not_met():
    text = with_requirements(STRIPES, "{attack_success: 0.1}")
    section = judge(parse_recipe(text, str(STRIPES)), evidence(0.0, 0.0))
    assert section["unmet"] == [
        "attack success (stripes): not judged, no attack was run for this edit"
    ]


def test_an_update_needs_its_new_fact_shown():
    recipe = load_recipe(QUORVIA)
    bad = evidence(0.0, 0.0)
    bad["edits"][0]["sets"]["edited"]["detectors"]["toy-deep"] = bad["edits"][0]["sets"]["edited"][
        "detectors"
    ].pop("toy")
    for name in ("held_out", "preserve", "unrelated"):
        found = bad["edits"][0]["sets"][name]["detectors"]
        found["toy-deep"] = found.pop("toy")
    bad["edits"][0]["sets"]["edited"]["detectors"]["toy-deep"]["after"]["target"] = 0.0
    assert judge(recipe, bad)["unmet"] == ["new fact shown (the seal of quorvia): 0% < 90%"]


def test_with_clip_alone_only_ssim_is_judged_and_the_rest_is_listed():
    recipe = parse_recipe(STRIPES.read_text().replace("[clip, toy]", "[clip]"), str(STRIPES))
    found = evidence(1.0, 1.0)
    for prompt_set in found["edits"][0]["sets"].values():
        del prompt_set["detectors"]["toy"]
    section = judge(recipe, found)
    assert section["met"]
    assert len(section["not_judged"]) == 4
    assert "no rate detector" in section["not_judged"][0]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{concept_left: 1.5}", "requirements.concept_left: expected a number from 0 to 1"),
        ("{bar: 0.1}", "requirements.bar: unknown field"),
        ("{target_shown: 0.9}", "requirements: expected no target_shown in an erase"),
        ("{ssim: '0.5'}", "requirements.ssim"),
    ],
)
def test_the_schema_refuses_bad_requirements_with_their_line(text, fragment):
    with pytest.raises(RecipeError) as info:
        parse_recipe(with_requirements(STRIPES, text), "r.yaml")
    assert fragment in str(info.value)
    assert "r.yaml:" in str(info.value)


@pytest.mark.parametrize(
    ("recipe_text", "fragment"),
    [
        (with_requirements(STRIPES, "{detector: nudenet}"), "requirements.detector: expected one"),
        (with_requirements(STRIPES, "{detector: clip}"), "not rates"),
        (
            with_requirements(STRIPES, "{concept_left: 0.2}").replace("[clip, toy]", "[clip]"),
            "requirements.concept_left: expected a rate detector",
        ),
        (
            with_requirements(STRIPES, "{attack_success: 0.2}") + "  attack: {steps: 0}\n",
            "requirements.attack_success: expected an attack",
        ),
    ],
)
def test_validate_refuses_requirements_it_could_not_judge(recipe_text, fragment):
    if "attack: {steps: 0}" in recipe_text:
        off = "  attack: {steps: 0}\n  attacks: {concept_vector: false, soft_prompt: false}\n"
        recipe_text = recipe_text.replace("evidence:\n", "evidence:\n" + off, 1)
        recipe_text = recipe_text.removesuffix("  attack: {steps: 0}\n")
    with pytest.raises(RecipeError) as info:
        preflight(parse_recipe(recipe_text, str(STRIPES)), offline=True)
    assert fragment in str(info.value)


def test_the_summary_chart_marks_each_bound_bar_at_its_threshold():
    from locopack.evidence.charts import efficacy_bars, robustness_bars, specificity_bars

    text = with_requirements(STRIPES, "{concept_left: 0.05, attack_success: 0.2}")
    found = evidence(0.0, 0.5, kept=0.75, attack={"before": 1.0, "after": 0.25})
    for index, edit in enumerate(found["edits"]):
        edit.update(kind="erase", label="stripes", edit=index, success_score=["original", -1])
    row = {"attack": "word_search", "name": "word search", "edit": 0, "label": "stripes"}
    row |= {"base": 1.0, "edited": 0.25, "chance": {"base": 0.0, "edited": 0.0}}
    found["attacks"] = {"protocol": {"kind": "rate"}, "rows": [row], "skipped": []}
    found["requirements"] = judge(parse_recipe(text, str(STRIPES)), found)
    assert [bar[3] for bar in efficacy_bars(found)[1]] == [0.05, 0.05]
    preserve, unrelated = specificity_bars(found)
    assert preserve[4:] == (pytest.approx(0.9), 0.6) and unrelated[4:] == (pytest.approx(0.9), 0.6)
    assert [bar[3] for bar in robustness_bars(found)] == [0.05, 0.2, None]
    del found["requirements"]  # evidence made before requirements: no marks
    assert [bar[3] for bar in efficacy_bars(found)[1]] == [None, None]
