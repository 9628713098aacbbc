"""Prompts nobody listed: neighbours the edit keeps, unrelated prompts the evidence draws,
and the positions a preserve prompt keeps."""

from __future__ import annotations

import pytest
import torch

from locopack.edit import compute_delta
from locopack.edit.tokens import edit_prompts, preserve_positions
from locopack.errors import RecipeError
from locopack.evidence.before_after import prompt_sets
from locopack.models import LoadedBase
from locopack.prompt_samples import neighbours, sampled_unrelated, toy_captions
from locopack.recipe import parse_recipe
from locopack.recipe.checks import preflight

RECIPE = """
version: 1
name: erase-stripes
base: {{model: {model}}}
edits:
  - kind: erase
    attribute: style
    concept: stripes
    prompts: ["a red circle on a {{concept}} background"]
    target: "a red circle on a plain background"
    preserve: ["a blue square on a checker background"]
edit:
  tokens: all
  neighbours: {neighbours}
evidence:
  unrelated: ["a green circle on a dots background"]
  sample_unrelated: {unrelated}
"""


def _recipe(
    tmp_path,
    neighbours="{count: 12, source: toy}",
    unrelated="{count: 12, source: toy}",
    model="./missing",
):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(model=model, neighbours=neighbours, unrelated=unrelated))
    return parse_recipe(path.read_text(), str(path))


def test_samples_are_deterministic_disjoint_and_never_name_the_concept(tmp_path):
    recipe = _recipe(tmp_path)
    kept, drawn = neighbours(recipe), sampled_unrelated(recipe)
    assert kept == neighbours(recipe) and drawn == sampled_unrelated(recipe)
    assert len(kept) == len(set(kept)) == 12 and len(drawn) == len(set(drawn)) == 12
    assert set(kept) <= set(toy_captions()) and set(drawn) <= set(toy_captions())
    assert not set(kept) & set(drawn)  # the evidence never measures on a kept prompt
    listed = {
        "a red circle on a stripes background",
        "a red circle on a plain background",
        "a blue square on a checker background",
        "a green circle on a dots background",
    }
    assert not (set(kept) | set(drawn)) & listed
    assert not any("stripes" in p for p in kept + drawn)
    # another seed draws other prompts
    other = _recipe(tmp_path, unrelated="{count: 12, source: toy, seed: 5}")
    assert sampled_unrelated(other) != drawn and neighbours(other) == kept


def test_evidence_measures_the_listed_and_the_sampled_unrelated_prompts(tmp_path):
    recipe = _recipe(tmp_path)
    unrelated = [p for p, _ in prompt_sets(recipe)[0]["sets"]["unrelated"]]
    assert unrelated == ["a green circle on a dots background", *sampled_unrelated(recipe)]


def test_a_prompt_file_beside_the_recipe_is_read_without_comments(tmp_path):
    (tmp_path / "prompts.txt").write_text(
        "# unrelated prompts\n\na photo of a dog\na mountain river\nzebra stripes\n"
        "a red car\n  a bowl of fruit  \n"
    )
    recipe = _recipe(tmp_path, neighbours="{count: 2, source: prompts.txt}", unrelated="null")
    kept = neighbours(recipe)
    assert len(kept) == 2 and set(kept) <= {
        "a photo of a dog",
        "a mountain river",
        "a red car",
        "a bowl of fruit",
    }  # "zebra stripes" names the concept, the comment is no prompt


@pytest.mark.parametrize(
    ("neighbours_spec", "unrelated_spec", "expected"),
    [
        (
            "{count: 2, source: nowhere.txt}",
            "null",
            "edit.neighbours.source: expected 'toy' or 'toy-deep' or a readable",
        ),
        ("{count: 60, source: toy}", "null", "edit.neighbours.count: expected at most 51"),
        (
            "{count: 40, source: toy}",
            "{count: 40, source: toy}",
            "sample_unrelated.count: expected at most 11",
        ),
    ],
)
def test_preflight_names_a_sample_that_cannot_be_drawn(
    tmp_path, twin_dirs, neighbours_spec, unrelated_spec, expected
):
    recipe = _recipe(tmp_path, neighbours_spec, unrelated_spec, model=twin_dirs["sd1"])
    with pytest.raises(RecipeError) as caught:
        preflight(recipe, offline=True)
    assert expected in str(caught.value) and "recipe.yaml" in str(caught.value)


def test_preserve_prompts_keep_every_position_the_sites_read(twin_pipes):
    pipe, family = twin_pipes["sd1"]  # CLIP: padding is read
    prompt = "a photo of a dog"
    assert preserve_positions(family, pipe, prompt, "all") == list(range(family.max_length(pipe)))
    assert preserve_positions(family, pipe, prompt, "last") == [
        family.last_token_position(pipe, prompt)
    ]
    pipe, family = twin_pipes["pixart"]  # T5 with a mask: padding is not read
    assert preserve_positions(family, pipe, prompt, "all") == family.content_positions(pipe, prompt)


def test_the_edit_keeps_its_neighbours_outputs(tmp_path, twin_pipes):
    pipe, family = twin_pipes["sd1"]
    site = family.sites(pipe.unet)[2]
    with_neighbours = _recipe(tmp_path, unrelated="null")
    without = _recipe(tmp_path, neighbours="null", unrelated="null")
    prompts = edit_prompts(pipe, family, with_neighbours)
    assert set(neighbours(with_neighbours)) <= set(prompts.preserve)

    def drift(recipe) -> float:
        """Relative change of the site's key output on the neighbour prompts."""
        delta = compute_delta(LoadedBase(pipe, family), recipe, [site.path])
        states = family.encode(pipe, neighbours(with_neighbours))
        key = pipe.unet.get_submodule(site.key)
        before = key(states)
        with delta.applied(pipe.unet), torch.no_grad():
            after = key(states)
        return float((after - before).norm() / before.norm())

    assert drift(with_neighbours) < 0.5 * drift(without)
