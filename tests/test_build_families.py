"""The stages after export (evidence with its attack, card, history) on every family's twin,
each with its own tokenizer, and the exports exactly as `validate` announced them; and a
tokenizer of sub-word pieces only, which leaves the attack nothing to search with: the card
and evidence.json say so, and the build finishes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from locopack.cli import cli
from locopack.filenames import ADAPTER_FILE, KOHYA_FILE, MANIFEST_FILE, MERGED_DIR, ONNX_DIR
from locopack.models.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer
from locopack.release.audit import audit_folder

pytestmark = pytest.mark.slow

FAMILIES = ("sd1", "sd2", "sdxl", "if", "pixart", "sd3", "flux")
FAMILIES += ("flux2", "z-image", "lumina2", "sana", "chroma", "qwen-image")
#: image sizes where a pipeline refuses 16 (SANA's sizes are multiples of 32)
RESOLUTION = {"sana": 32}
#: one edit at the first site (no sweep), one seed, two steps, a two-image attack
RECIPE = """\
version: 1
name: twin-{family}-all-stages
base:
  model: ./{model}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting in the style of {{concept}}"]
    target: "a painting"
    preserve: ["a photo of a cat"]
localize:
  layers: [0]
  steps: 2
  guidance: {guidance}
  seeds: [0]
  resolution: {resolution}
  scorer: ./{model}/scorer
edit:
  lambda: 0.1
  allow_image_sites: true
evidence:
  unrelated: ["a photo of a dog"]
  attack: {{tokens: 1, candidates: 2, steps: 2}}
  attacks: {{concept_vector: {{steps: 4}}, soft_prompt: {{steps: 2, timesteps: 1}}}}
"""


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["--threads", "1", *args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Path:
    """A folder holding ``tiny-FAMILY`` (with its scorer) for every family."""
    root = tmp_path_factory.mktemp("family-twins")
    for family in FAMILIES:
        _run("twin", family, str(root / f"tiny-{family}"))
    return root


def _build(root: Path, family: str, model: str) -> Path:
    guidance = 0.0 if family == "flux" else 3.0
    recipe = root / f"{model}.yaml"
    resolution = RESOLUTION.get(family, 16)
    recipe.write_text(
        RECIPE.format(family=family, model=model, guidance=guidance, resolution=resolution)
    )
    _run("build", str(recipe), "--out", str(root / f"release-{model}"))
    return root / f"release-{model}"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_stage_after_export_runs_on_each_twin(twins, family):
    release = _build(twins, family, f"tiny-{family}")
    summary = _run("validate", str(twins / f"tiny-{family}.yaml"))
    (announced,) = [line for line in summary.splitlines() if "build writes" in line]
    exports = {ADAPTER_FILE, MANIFEST_FILE, KOHYA_FILE, f"{MERGED_DIR}/", f"{ONNX_DIR}/"}
    written = {p.name + "/" * p.is_dir() for p in release.iterdir()} & exports
    assert set(announced.split("build writes ")[1].split(", ")) == written
    assert (KOHYA_FILE in written) == (family in ("sd1", "sd2", "sdxl"))
    evidence = json.loads((release / "evidence.json").read_text())
    (attack,) = evidence["attack"]["edits"]
    assert attack["vocabulary"] > 0 and evidence["attack"]["skipped"] == []
    assert "van gogh" not in attack["searches"]["edited"]["prompt"]
    # every attack ran, but the soft prompt where the pipeline encodes without gradient
    attacks = evidence["attacks"]
    ran = {r["attack"] for r in attacks["rows"]}
    skipped = {s["attack"] for s in attacks["skipped"]}
    assert ran | skipped == {"word_search", "concept_vector", "soft_prompt"}
    # IF encodes without gradient, SANA's sites read its text on a path without one, and the
    # refiner families' sites read each prompt's own rows: no states can be given there
    unfed = {"if": {"soft_prompt"}, "sana": {"soft_prompt"}}
    unfed |= dict.fromkeys(("z-image", "lumina2"), {"concept_vector", "soft_prompt"})
    assert skipped == unfed.get(family, set())
    card = (release / "README.md").read_text()
    for name in ran:
        assert f"| van gogh | {name.replace('_', ' ')}" in card, name
    assert audit_folder(release).ok


@pytest.mark.parametrize(
    ("family", "pieces"), [("sd3", tiny_clip_tokenizer), ("pixart", tiny_t5_tokenizer)]
)
def test_a_tokenizer_of_sub_word_pieces_is_no_attack_and_says_why(twins, family, pieces):
    model = f"pieces-{family}"
    shutil.copytree(twins / f"tiny-{family}", twins / model)
    shutil.rmtree(twins / model / "tokenizer")
    pieces(()).save_pretrained(twins / model / "tokenizer")  # letters only, no whole word
    release = _build(twins, family, model)
    attack = json.loads((release / "evidence.json").read_text())["attack"]
    (skipped,) = attack["skipped"]
    assert attack["edits"] == [] and skipped["label"] == "van gogh"
    assert "holds no whole word the search may use" in skipped["why"]
    card = (release / "README.md").read_text()
    assert f"No word search attack was run on *van gogh*: {skipped['why']}." in card
    assert audit_folder(release).ok
