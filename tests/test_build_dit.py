"""`locopack build` end to end on the SD3, FLUX.1, FLUX.2 and text-refiner twins (the recipes
in recipes/twin), then `audit`: every check passes, also re-running LocoEdit or the whole
recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from locopack.cli import cli
from locopack.hooks.joint import POOLED
from locopack.pipeline.reproduce import Reproduce
from locopack.release.audit import audit_folder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["--threads", "1", *args])
    assert result.exit_code == 0, result.output
    return result.output


#: {family: what its build appends to the twin recipe}
BUILDS = {
    "sd3": "export:\n  merged: true\n",
    "flux": "",
    "flux2": "",
    "z-image": "export:\n  merged: true\n",
    "lumina2": "",
}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """{family: release folder}, each built from its twin recipe in a folder where the
    recipe's ``./out/tiny-*`` is the twin (the SD3 one also with a merged checkpoint)."""
    root = tmp_path_factory.mktemp("dit-build")
    found = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for name, extra in BUILDS.items():
            _run("twin", name, f"out/tiny-{name}")
            recipe = root / f"{name}.yaml"
            source = ROOT / "recipes" / "twin" / f"{name}-erase-van-gogh.yaml"
            recipe.write_text(source.read_text() + extra)
            _run("build", str(recipe), "--out", f"out/release-{name}")
            found[name] = root / "out" / f"release-{name}"
    return found


@pytest.mark.parametrize("name", list(BUILDS))
def test_the_twin_release_audits(name, releases):
    release = releases[name]
    report = audit_folder(release)
    assert report.ok, report.to_dict()
    assert ("merged" in {c.name for c in report.checks}) == bool(BUILDS[name])
    for mode in (Reproduce.QUICK, Reproduce.FULL):
        report = audit_folder(release, reproduce=mode)
        assert report.ok, report.to_dict()


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_the_card_says_what_the_pooled_path_and_image_sites_mean(name, releases):
    release = releases[name]
    localization = json.loads((release / "localization.json").read_text())
    assert localization["pooled_only"]["window"] == [POOLED]
    assert localization["reference_rung"]["steps"] <= localization["rung"]["steps"]
    card = (release / "README.md").read_text()
    assert "The pooled CLIP vector modulates every block and is not a site" in card
    assert "a few joint-attention blocks" in card and "cross-attention layers" not in card
    provenance = json.loads((release / "lora_manifest.json").read_text())["provenance"]
    # the FLUX recipe's window (4 of the twin's 6 sites) always reaches single-stream blocks
    image_sites = provenance["image_sites"]
    assert bool(image_sites) == (name == "flux")
    assert ("also map image tokens" in card) == (name == "flux")
    assert all(f"`{path}`" in card for path in image_sites)
    assert not (release / "lora_kohya.safetensors").exists()  # no kohya format for these


def test_the_flux2_card_says_its_sites_are_text_only_and_what_is_not_a_site(releases):
    from locopack.models import get_family

    release = releases["flux2"]
    localization = json.loads((release / "localization.json").read_text())
    assert localization["pooled_only"] is None  # no pooled vector: no such reference line
    card = " ".join((release / "README.md").read_text().split())
    assert get_family("flux2").card_note in card
    assert "pooled CLIP vector" not in card and "also map image tokens" not in card
    provenance = json.loads((release / "lora_manifest.json").read_text())["provenance"]
    assert provenance["image_sites"] == []
    assert all(path.startswith("transformer_blocks.") for path in localization["chosen_layers"])


def test_evidence_is_drawn_at_the_recipe_resolution(releases):
    from PIL import Image

    for name, release in releases.items():
        evidence = json.loads((release / "evidence.json").read_text())
        image = Image.open(release / evidence["gallery"][0]["image"])
        side = yaml.safe_load(
            (ROOT / "recipes" / "twin" / f"{name}-erase-van-gogh.yaml").read_text()
        )
        assert image.size == (side["localize"]["resolution"],) * 2


@pytest.mark.parametrize("name", ["z-image", "lumina2"])
def test_the_card_says_the_text_refiner_sites_are_text_only(name, releases):
    release = releases[name]
    localization = json.loads((release / "localization.json").read_text())
    assert localization["pooled_only"] is None  # no pooled text path
    assert all(path.startswith("context_refiner.") for path in localization["site_paths"])
    card = (release / "README.md").read_text()
    assert "a few text refiner blocks" in card and "cross-attention layers" not in card
    assert "The sites are text-only" in card and "also map image tokens" not in card
    assert "pooled CLIP vector" not in card
