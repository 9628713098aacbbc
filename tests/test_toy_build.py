"""`locopack build` on the trained toy world: a release whose evidence shows the edit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard
from PIL import Image

from locopack.prompt_samples import sampled_unrelated
from locopack.recipe import load_recipe
from locopack.release.audit import audit_folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import toy_world as tw  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def release(toy_release):
    return toy_release  # built once per session (conftest), shared with test_reproducible


def test_toy_release_has_card_adapter_history_and_evidence(release):
    for name in (
        "pytorch_lora_weights.safetensors",
        "lora_kohya.safetensors",
        "history.jsonl",
        "evidence.json",
        "localization.png",
        "README.md",
    ):
        assert (release / name).is_file(), name
    data = ModelCard.load(release / "README.md").data.to_dict()
    assert data["license"] == "apache-2.0" and "concept-erasure" in data["tags"]
    assert audit_folder(release).ok


def test_toy_evidence_shows_the_style_removed_and_the_rest_kept(release):
    evidence = json.loads((release / "evidence.json").read_text())
    sets = evidence["edits"][0]["sets"]
    before = sets["edited"]["summary"]["before"]["original"]["mean"]
    after = sets["edited"]["summary"]["after"]["original"]["mean"]
    assert after < before - 5, (before, after)  # CLIP: the images no longer match "stripes"
    # the detectors on the after images of the gallery: no stripes, colors and shapes kept
    for item in evidence["gallery"]:
        image = np.asarray(Image.open(release / item["image"]).convert("RGB"))
        found, asked = tw.detect(image), tw.caption_attributes(item["prompt"])
        assert found["texture"] != "stripes", item
        assert found["color"] == asked["color"], item


def test_toy_release_keeps_prompts_nobody_listed(release):
    recipe = load_recipe(ROOT / "recipes" / "toy" / "erase-stripes.yaml")
    evidence = json.loads((release / "evidence.json").read_text())
    unrelated = evidence["edits"][0]["sets"]["unrelated"]
    assert unrelated["prompts"] == list(recipe.evidence.unrelated) + sampled_unrelated(recipe)
    # the toy detector: share of images that show every attribute their prompt asks for
    found = unrelated["detectors"]["toy"]
    assert found["after"]["prompt"] >= found["before"]["prompt"] - 0.10, found
    card = (release / "README.md").read_text()
    assert "include 12 neighbours drawn from `toy`" in card
    assert "localized the\nattribute to a few cross-attention layers" in card


def test_the_toy_benchmark_prints_the_figures_of_the_evidence(release):
    """scripts/bench_toy_world.py, at the evidence's seeds, counts what evidence.json (and so
    the card) reports: the edited prompts' stripes before and after, and the unrelated
    prompts whose images show every attribute asked."""
    import bench_toy_world as bench

    from locopack.delta import WeightDelta
    from locopack.evidence.detectors import toy
    from locopack.pipeline.stages import load_base

    recipe = load_recipe(ROOT / "recipes" / "toy" / "erase-stripes.yaml")
    evidence = json.loads((release / "evidence.json").read_text())
    sets = evidence["edits"][0]["sets"]
    pipe = load_base(recipe).pipe
    pipe.set_progress_bar_config(disable=True)
    edit, seeds = recipe.edits[0], evidence["seeds"]
    prompts, unrelated = edit.originals(), sets["unrelated"]["prompts"]

    def figures():
        def draw(chosen):
            return bench.generate(pipe, chosen, seeds, evidence["steps"], evidence["guidance"])

        found = bench.rates(draw(prompts), prompts, len(seeds), edit, toy)
        return found["edited"], bench.specificity(draw(unrelated), unrelated, len(seeds), toy)

    before = figures()
    with WeightDelta.load(release / "delta.safetensors").applied(pipe.unet):
        after = figures()
    card = {
        when: (
            sets["edited"]["detectors"]["toy"][when]["concept"],
            sets["unrelated"]["detectors"]["toy"][when]["prompt"],
        )
        for when in ("before", "after")
    }
    assert card == {"before": pytest.approx(before), "after": pytest.approx(after)}
    assert card["before"][0] > card["after"][0]  # a comparison that can tell them apart
