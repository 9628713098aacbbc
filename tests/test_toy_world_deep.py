"""The deep toy world: its detectors read its renders, its captions name what they show."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from locopack.evidence.detectors import load_detector, toy_deep
from locopack.prompt_samples import toy_captions

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))

import toy_world_deep as tw  # noqa: E402

COMBOS = list(itertools.product(*(tw.VALUES[k] for k in tw.ATTRIBUTES)))


@pytest.fixture(scope="module")
def renders():
    """432 seeded renders: every (color, shape, texture, size) three times."""
    rng = np.random.default_rng(4321)
    return [(attrs, tw.render(*attrs, rng)) for attrs in COMBOS * 3]


@pytest.mark.parametrize("attribute", tw.ATTRIBUTES)
def test_each_attribute_is_read_right_on_ground_truth(renders, attribute):
    index = tw.ATTRIBUTES.index(attribute)
    wrong = [(a, tw.detect(img)[attribute]) for a, img in renders]
    wrong = [(a, found) for a, found in wrong if found != a[index]]
    assert len(wrong) <= 4, wrong[:5]  # >= 99% right


def test_sizes_do_not_overlap_and_facts_are_named_by_their_four_attributes():
    low_large = tw.SIZE_PIXELS["large"][0]
    assert tw.SIZE_PIXELS["small"][1] - 1 <= toy_deep.SMALL_AT_MOST < low_large
    rng = np.random.default_rng(0)
    for fact, appearance in tw.FACTS.items():
        assert tw.detect(tw.render(*appearance, rng))["fact"] == fact
        assert tw.caption_attributes(f"a drawing of {fact}") == dict(
            zip(tw.ATTRIBUTES, appearance, strict=True)
        )
    color, shape, texture, size = tw.FACTS["the seal of quorvia"]
    other = "large" if size == "small" else "small"
    assert tw.detect(tw.render(color, shape, texture, other, rng))["fact"] == ""


def test_captions_name_only_what_the_image_shows():
    samples = tw.sample_dataset(300, seed=5)
    named_size = 0
    for s in samples:
        asked = tw.caption_attributes(s.caption)
        assert all(getattr(s, k) == v for k, v in asked.items()), s.caption
        named_size += "size" in asked
    assert 0 < named_size < len(samples)  # some captions leave the size out
    assert all(s.caption in tw.all_training_captions() for s in samples)
    held_out = {w for t in tw.HELD_OUT_TEMPLATES for w in t.split()} - set(
        " ".join(tw.all_training_captions()).split()
    )
    assert held_out == {"pattern", "behind", "{texture}", "{size}", "{color}", "{shape}"}


def test_the_toy_deep_detector_and_caption_source():
    rng = np.random.default_rng(1)
    cases = COMBOS[::7]
    images = [Image.fromarray(tw.render(*a, rng)) for a in cases]
    prompts = [f"a {z} {c} {s} on a {t} background" for c, s, t, z in cases]
    findings = load_detector("toy-deep")(images, prompts)
    assert all(f["prompt"] == 1.0 for f in findings)
    assert all(f[z] == 1.0 for f, (_, _, _, z) in zip(findings, cases, strict=True))
    wrong_size = [p.replace(" small ", " LARGE ").replace(" large ", " small ") for p in prompts]
    wrong_size = [p.replace(" LARGE ", " large ") for p in wrong_size]
    assert all(f["prompt"] == 0.0 for f in load_detector("toy-deep")(images, wrong_size))
    captions = toy_captions("toy-deep")
    assert len(captions) == 144 == len(set(captions))
    assert all(tw.caption_attributes(c).keys() == set(tw.ATTRIBUTES) for c in captions)
