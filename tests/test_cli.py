"""The command line as a user meets it: help, the README's main job, one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from locopack.cli import cli
from locopack.delta import WeightDelta

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_command_and_teaches_a_session():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("validate", "layers", "twin", "localize", "edit", "neurons"):
        assert command in result.output
    assert "A typical session" in result.output


def test_readme_twin_example(tmp_path, monkeypatch):
    """`locopack twin sd1 recipes/twin/out/tiny-sd1` then `locopack edit recipes/twin/...`
    (README): the recipe's ``./out/tiny-sd1`` is beside the recipe, not in the working folder."""
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "recipes" / "twin" / "sd1-erase-van-gogh.yaml"
    recipe.parent.mkdir(parents=True)
    shutil.copy(ROOT / "recipes" / "twin" / "sd1-erase-van-gogh.yaml", recipe)
    runner = CliRunner()
    twin = "recipes/twin/out/tiny-sd1"
    result = runner.invoke(cli, ["--threads", "1", "twin", "sd1", twin])
    assert result.exit_code == 0, result.output
    again = runner.invoke(cli, ["twin", "sd1", twin])
    assert again.exit_code == 2 and "--force" in again.output

    result = runner.invoke(cli, ["edit", str(recipe)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / "twin-sd1-erase-van-gogh"
    localization = json.loads((out / "localization.json").read_text())
    report = json.loads((out / "edit.json").read_text())
    assert report["layers"] == localization["chosen_layers"] and len(report["layers"]) == 2
    delta = WeightDelta.load(out / "delta.safetensors")
    assert set(delta.provenance.sites) == set(report["layers"])
    assert (out / "recipe.yaml").read_text() == recipe.read_text()
    assert "largest relative edit error" in result.output


def test_validate_checks_the_window_against_a_local_model(tmp_path, twin_dirs):
    text = (ROOT / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        text.replace("./out/tiny-sd1", str(twin_dirs["sd1"])).replace("window: 2", "window: 99")
    )
    result = CliRunner().invoke(cli, ["validate", str(recipe)])
    assert result.exit_code == 1
    assert "localize.window: the model has 16 text-conditioning sites" in result.output
    assert "Traceback" not in result.output
