"""The parts of each family's text sequence and the token rules over them: ``cover`` (the
default) reaches the concept in every encoder's part; ``last`` stays one token of the first."""

from __future__ import annotations

import pytest

from locopack.edit import compute_delta
from locopack.edit.tokens import edit_pairs, part_pairs
from locopack.models import LoadedBase
from locopack.models.flux import Flux
from locopack.models.sd3 import StableDiffusion3
from locopack.recipe import parse_recipe
from locopack.release.card_body import token_rows_text

from .conftest import FAMILY_NAMES

ORIGINAL, TARGET = "van gogh starry night", "a painting"
ENCODER = {"sd1": "CLIP", "sd2": "CLIP", "sdxl": "CLIP", "if": "T5", "pixart": "T5"}


@pytest.fixture(scope="module")
def dit_pipes():
    """{name: (pipe, family)}: the SD3 and FLUX twins with 16 T5 tokens."""
    out = {}
    for name, family in (("sd3", StableDiffusion3), ("flux", Flux)):
        family = family.with_t5_length(16)
        out[name] = (family.build_twin(0), family)
    return out


def _decoded(part, prompt, positions):
    ids = part.token_ids(prompt)
    return part.tokenizer.decode([ids[i] for i in positions]).replace(" ", "").lower()


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_one_part_families_hold_one_encoders_whole_sequence(name, twin_pipes):
    pipe, family = twin_pipes[name]
    [part] = family.text_parts(pipe)
    assert (part.name, part.start, part.length) == (ENCODER[name], 0, family.max_length(pipe))
    assert part.token_ids(ORIGINAL) == family.token_ids(pipe, ORIGINAL)


def test_sd3_holds_clip_then_t5_and_flux_t5_alone(dit_pipes):
    pipe, family = dit_pipes["sd3"]
    parts = [(p.name, p.start, p.length) for p in family.text_parts(pipe)]
    assert parts == [("CLIP", 0, 77), ("T5", 77, 16)]
    assert sum(p[2] for p in parts) == family.max_length(pipe)
    pipe, family = dit_pipes["flux"]
    assert [(p.name, p.start, p.length) for p in family.text_parts(pipe)] == [("T5", 0, 16)]


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_cover_pairs_the_concept_and_the_last_token_of_every_part(name, dit_pipes):
    """``van gogh starry night``: the concept is not the last token, so ``last`` (one CLIP
    token on SD3, one T5 token on FLUX: ``night``) edits none of its rows."""
    pipe, family = dit_pipes[name]
    found = part_pairs(family, pipe, ORIGINAL, TARGET, "cover", "van gogh")
    assert [part.name for part, _ in found] == [p.name for p in family.text_parts(pipe)]
    for part, pairs in found:
        concept = part.concept_positions(ORIGINAL, "van gogh")
        last = part.last_token(ORIGINAL)
        assert _decoded(part, ORIGINAL, concept) == "vangogh"
        assert [i for i, _ in pairs] == sorted(concept + [last])
        assert dict(pairs)[last] == part.last_token(TARGET)  # last to last, as under `last`
    first = found[0][0]
    last_rule = edit_pairs(family, pipe, ORIGINAL, TARGET, "last", "van gogh")
    assert last_rule == [(first.last_token(ORIGINAL), first.last_token(TARGET))]
    assert _decoded(first, ORIGINAL, [last_rule[0][0]]) == "night"


def test_concept_and_all_rules_stay_inside_each_part_on_sd3(dit_pipes):
    """The concept's T5 tokens pair with T5 positions of the target (the old rule indexed the
    CLIP alignment with them and failed)."""
    pipe, family = dit_pipes["sd3"]
    clip, t5 = family.text_parts(pipe)
    for rule in ("concept", "all"):
        pairs = edit_pairs(family, pipe, ORIGINAL, TARGET, rule, "van gogh")
        in_t5 = [(i, j) for i, j in pairs if i >= t5.start]
        assert in_t5 and all(t5.start <= j < t5.start + t5.length for _, j in in_t5)
        assert all(j < clip.length for i, j in pairs if i < t5.start)
    concept = edit_pairs(family, pipe, ORIGINAL, TARGET, "concept", "van gogh")
    assert [i for i, _ in concept] == family.concept_positions(pipe, ORIGINAL, "van gogh")


def test_cover_on_one_part_is_last_plus_the_concept_and_needs_no_concept(twin_pipes):
    pipe, family = twin_pipes["sd1"]
    original = "a painting in the style of van gogh"
    cover = edit_pairs(family, pipe, original, TARGET, "cover", "van gogh")
    concept = edit_pairs(family, pipe, original, TARGET, "concept", "van gogh")
    last = edit_pairs(family, pipe, original, TARGET, "last", "van gogh")
    assert cover == sorted(set(concept) | set(last)) and last[0] in cover and len(cover) == 2
    # a prompt without the concept: its last token alone (``concept`` would refuse it)
    assert edit_pairs(family, pipe, "a starry night", TARGET, "cover", "van gogh") == (
        edit_pairs(family, pipe, "a starry night", TARGET, "last", "van gogh")
    )


RECIPE = """
version: 1
name: erase-van-gogh
base: {model: ./x}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting of a cat in the style of {concept}", "{concept} starry night"]
    target: "a painting"
"""


def test_cover_is_the_default_and_the_delta_records_each_encoders_rows(twin_pipes):
    recipe = parse_recipe(RECIPE, "r.yaml")
    assert recipe.edit.tokens == "cover"
    pipe, family = twin_pipes["sd1"]
    site = family.sites(pipe.unet)[0].path
    provenance = compute_delta(LoadedBase(pipe, family), recipe, [site]).provenance
    rows = provenance.token_rows
    assert [r["prompt"] for r in rows] == recipe.edits[0].originals()
    [part] = family.text_parts(pipe)
    for row in rows:
        [entry] = row["parts"]
        concept = part.concept_positions(row["prompt"], "van gogh")
        last = part.last_token(row["prompt"])
        assert entry == {"encoder": "CLIP", "positions": sorted({*concept, last}), "last": last}
    assert provenance.columns == sum(len(r["parts"][0]["positions"]) for r in rows)


def test_card_words_name_each_encoders_positions():
    parts = [
        {"encoder": "CLIP", "positions": [1, 2, 4], "last": 4},
        {"encoder": "T5", "positions": [0, 1, 3, 4, 5, 9]},
    ]
    assert token_rows_text(parts) == "CLIP 1-2 and 4 (last: 4), T5 0-1 and 3-5 and 9"
