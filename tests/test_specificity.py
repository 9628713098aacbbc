"""Specificity on the images: SSIM/PSNR of before vs after, and flags on a damaging edit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from locopack.cli import cli
from locopack.evidence.specificity import PSNR_IDENTICAL, flagged, image_change, prompt_changes

ROOT = Path(__file__).resolve().parents[1]
STRIPES = ROOT / "recipes" / "toy" / "erase-stripes.yaml"


def _noise(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_image_change_is_one_for_identical_images_and_falls_with_damage():
    image = _noise(0)
    assert image_change(image, image.copy()) == {"ssim": 1.0, "psnr": PSNR_IDENTICAL}
    pixels = np.asarray(image).astype(int)
    slight = Image.fromarray(np.clip(pixels + 3, 0, 255).astype(np.uint8))
    small, large = image_change(image, slight), image_change(image, _noise(1))
    assert 0.9 < small["ssim"] < 1.0 and small["psnr"] > 35
    assert large["ssim"] < 0.2 and large["psnr"] < 12
    tiny = image_change(_noise(2, 5), _noise(3, 5))  # smaller than SSIM's usual 7-px window
    assert tiny["ssim"] < 1.0


def test_prompt_changes_average_over_seeds_and_flag_below_the_threshold():
    same, other = [_noise(0), _noise(1)], [_noise(0), _noise(2)]
    change = prompt_changes(
        ["kept", "half"], {"kept": same, "half": same}, {"kept": same, "half": other}
    )
    assert change["ssim"][0] == 1.0 and 0.45 < change["ssim"][1] < 0.6
    assert flagged(change, 0.8) == [1] and flagged(change, 0.4) == []


def _damaging_recipe(folder: Path) -> Path:
    """The stripes erasure at every site with almost no regularization and no preserve
    constraint: it breaks the images of prompts it was never meant to touch."""
    text = STRIPES.read_text()
    text = text.replace(
        "base:\n  model: ./toy-world", f"base:\n  model: {ROOT / 'recipes/toy/toy-world'}"
    )
    text = text.replace("scorer: ./toy-clip", f"scorer: {ROOT / 'recipes/toy/toy-clip'}")
    text = text.replace("  mode: fast\n", "  mode: fast\n  layers: [0, 1, 2, 3, 4, 5, 6]\n")
    text = text.replace("  lambda: 0.1\n", "  lambda: 0.000001\n  preserve_weight: 0.0\n")
    text = text.replace("  seeds: [1000]\n", "  seeds: [0]\n  attack:\n    steps: 0\n")
    path = folder / "damaging.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_the_specificity_check_flags_a_damaging_edits_preserve_prompts(tmp_path):
    out = tmp_path / "damaging"
    args = ["--threads", "1", "build", str(_damaging_recipe(tmp_path)), "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    evidence = json.loads((out / "evidence.json").read_text())
    preserve = evidence["edits"][0]["sets"]["preserve"]
    assert len(preserve["flagged"]) >= len(preserve["prompts"]) // 2, preserve["change"]
    assert (out / preserve["flagged_grid"]).is_file()
    card = (out / "README.md").read_text()
    assert "Prompts whose images changed beyond the threshold" in card
    for prompt in preserve["flagged"]:
        assert f"- `{prompt}`" in card  # recipe text is shown literally, as code
    assert preserve["flagged_grid"] in card
