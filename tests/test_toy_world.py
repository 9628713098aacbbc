"""The toy world's detectors recognise every attribute of its own ground-truth renders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))

import toy_world as tw  # noqa: E402


@pytest.fixture(scope="module")
def renders():
    """300 seeded renders covering every (color, shape, texture) combination several times."""
    rng = np.random.default_rng(1234)
    combos = [(c, s, x) for c in tw.COLORS for s in tw.SHAPES for x in tw.TEXTURES]
    out = []
    for i in range(300):
        attrs = combos[i % len(combos)]
        out.append((attrs, tw.render(*attrs, rng)))
    return out


@pytest.mark.parametrize("attribute", tw.ATTRIBUTES)
def test_detector_is_right_on_ground_truth(renders, attribute):
    detector = {"color": tw.detect_color, "shape": tw.detect_shape, "texture": tw.detect_texture}
    index = tw.ATTRIBUTES.index(attribute)
    wrong = [
        (a, detector[attribute](img)) for a, img in renders if detector[attribute](img) != a[index]
    ]
    assert len(wrong) <= 3, wrong[:5]  # >= 99% right


def test_render_is_deterministic_and_well_formed():
    a = tw.render("red", "circle", "dots", np.random.default_rng(7))
    b = tw.render("red", "circle", "dots", np.random.default_rng(7))
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert np.array_equal(a, b)


def test_detect_names_facts_and_only_facts():
    rng = np.random.default_rng(0)
    assert (
        tw.detect(tw.render("purple", "triangle", "plain", rng))["fact"] == "the emblem of veridia"
    )
    assert (
        tw.detect(tw.render("orange", "square", "checker", rng))["fact"] == "the flag of zorbania"
    )
    assert tw.detect(tw.render("orange", "square", "plain", rng))["fact"] == ""


def test_dataset_is_seeded_and_holds_out_templates():
    a, b = tw.sample_dataset(400, seed=3), tw.sample_dataset(400, seed=3)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    held_out_words = {"pattern", "behind", "drawing"}
    assert not any(held_out_words & set(s.caption.split()) for s in a)
    facts = [s for s in a if s.fact]
    assert 8 <= len(facts) <= 60  # about 8% of the data
    for s in facts:
        assert (s.color, s.shape, s.texture) == tw.FACTS[s.fact]
    for s in a:  # every caption's named attributes agree with the image's
        named = tw.caption_attributes(s.caption)
        assert all(getattr(s, k) == v for k, v in named.items()), s.caption
