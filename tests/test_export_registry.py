"""Export formats are a registry: a format registered in one place (here, a toy format that
writes the Frobenius norm of every edited matrix) is a recipe key with its default, an option of
``locopack export``, a file ``validate`` lists, a file of a built release that the history
records and the audit accepts, and a tag of its card."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from locopack.cli import cli
from locopack.delta import WeightDelta
from locopack.errors import RecipeError
from locopack.export.formats import (
    ExportChoice,
    ExportFormat,
    ExportJob,
    export_formats,
    register_format,
    unregister_format,
)
from locopack.models import get_family
from locopack.recipe import parse_recipe
from locopack.recipe.schema import sync_export_formats
from locopack.storage import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TWIN_RECIPE = (ROOT / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()
NORMS_FILE = "delta_norms.json"
RECIPE = """
version: 1
name: norms
base: {model: ./x}
edits:
  - {kind: erase, attribute: object, concept: cat, prompts: ["a cat"], target: "a dog"}
"""


def _write_norms(job: ExportJob) -> dict[str, object]:
    norms = {path: float(delta.norm()) for path, delta in job.delta.deltas.items()}
    return {"norms": atomic_write_text(job.out / NORMS_FILE, json.dumps(norms, sort_keys=True))}


#: the whole of the toy format: this one entry
NORMS = ExportFormat(
    "delta_norms",
    "Frobenius norm of each edited matrix (delta_norms.json).",
    _write_norms,
    lambda family: [NORMS_FILE],
    card_tags=("delta-norms",),
    card_note=f"`{NORMS_FILE}` holds the norm of each edited matrix.",
)


@pytest.fixture
def norms():
    register_format(NORMS)
    yield NORMS
    unregister_format(NORMS.name)
    sync_export_formats()


def _recipe(export: str) -> str:
    return RECIPE + f"export: {export}\n"


def test_the_built_in_formats_keep_their_keys_defaults_and_files():
    assert [f.name for f in export_formats()][:4] == ["adapter", "kohya", "merged", "onnx"]
    recipe = parse_recipe(RECIPE, "r.yaml")
    assert recipe.export.asked() == {"adapter": True, "kohya": True, "merged": False, "onnx": False}
    sd1, pixart = get_family("sd1"), get_family("pixart")
    choice = ExportChoice.from_recipe(recipe.export, sd1)
    assert choice.files(sd1) == [
        "pytorch_lora_weights.safetensors",
        "lora_manifest.json",
        "lora_kohya.safetensors",
    ]
    # kohya is on by default: dropped, not refused, for a family without kohya files
    assert ExportChoice.from_recipe(recipe.export, pixart).names == ("adapter",)
    with pytest.raises(RecipeError, match="export.adapter: expected true"):
        parse_recipe(_recipe("{adapter: false}"), "r.yaml")


def test_a_registered_format_is_a_recipe_key_with_its_default_and_its_files(norms):
    assert parse_recipe(RECIPE, "r.yaml").export.asked()["delta_norms"] is False  # its default
    recipe = parse_recipe(_recipe("{delta_norms: true, merged: true}"), "r.yaml")
    assert recipe.export.asked()["delta_norms"] is True
    sd1 = get_family("sd1")
    choice = ExportChoice.from_recipe(recipe.export, sd1)
    assert choice.names == ("adapter", "kohya", "merged", "delta_norms")  # registry order
    assert choice.files(sd1)[-2:] == ["merged/", NORMS_FILE]
    with pytest.raises(RecipeError, match=r"r.yaml:\d+: export.delta_norms: expected a boolean"):
        parse_recipe(_recipe("{delta_norms: 'yes'}"), "r.yaml")


def test_an_unregistered_format_is_an_unknown_key_naming_the_registered_ones(norms):
    unregister_format(NORMS.name)
    with pytest.raises(RecipeError) as err:
        parse_recipe(_recipe("{delta_norms: true}"), "r.yaml")
    message = str(err.value)
    assert "export.delta_norms" in message
    assert all(name in message for name in ("adapter", "kohya", "merged", "onnx"))


def test_a_format_that_needs_the_base_is_refused_without_one_before_anything_is_written(
    norms, tmp_path
):
    import torch

    from locopack.errors import ExportError
    from locopack.pipeline.exports import export_delta

    delta = WeightDelta({"mid.attn2.to_k": torch.ones(4, 4)}, {"family": "sd1"})
    choice = ExportChoice(("adapter", "merged", "onnx", "delta_norms"))
    with pytest.raises(ExportError, match="a merged or onnx export needs the base model"):
        export_delta(delta, tmp_path / "out", choice)
    assert not (tmp_path / "out").exists()
    export_delta(delta, tmp_path / "out", ExportChoice(("delta_norms",)))  # needs no base
    assert json.loads((tmp_path / "out" / NORMS_FILE).read_text()) == {"mid.attn2.to_k": 4.0}


def test_the_export_command_offers_one_option_per_registered_format(norms):
    shown = CliRunner().invoke(cli, ["export", "--help"]).output
    assert "--delta-norms" in shown and NORMS.help.split(" (")[0] in shown
    for option in ("--adapter / --no-adapter", "--kohya", "--merged", "--onnx"):
        assert option in shown


@pytest.mark.slow
def test_a_release_built_with_a_registered_format_holds_audits_and_lists_it(norms, tmp_path):
    from locopack.release.audit import audit_folder
    from locopack.release.history import read_history

    runner = CliRunner()
    made = runner.invoke(cli, ["--threads", "1", "twin", "sd1", str(tmp_path / "twin")])
    assert made.exit_code == 0, made.output
    text = TWIN_RECIPE.replace("./out/tiny-sd1", str(tmp_path / "twin"))
    (tmp_path / "recipe.yaml").write_text(text + "export: {delta_norms: true}\n")

    listed = runner.invoke(cli, ["validate", str(tmp_path / "recipe.yaml"), "--offline"])
    assert listed.exit_code == 0, listed.output
    (announced,) = [line for line in listed.output.splitlines() if "build writes" in line]
    assert announced.rstrip().endswith(f"lora_kohya.safetensors, {NORMS_FILE}")

    out = tmp_path / "release"
    args = ["--threads", "1", "build", str(tmp_path / "recipe.yaml"), "--out", str(out)]
    built = runner.invoke(cli, args)
    assert built.exit_code == 0, built.output

    delta = WeightDelta.load(out / "delta.safetensors")  # the norms, computed here again
    written = json.loads((out / NORMS_FILE).read_text())
    assert written.keys() == delta.deltas.keys()
    for path, matrix in delta.deltas.items():
        expected = math.sqrt(sum(float(v) ** 2 for v in matrix.flatten().tolist()))
        assert written[path] == pytest.approx(expected, rel=1e-5)
    assert NORMS_FILE in read_history(out / "history.jsonl")[-1].files
    report = audit_folder(out)
    assert report.ok, [c for c in report.checks if not c.ok]
    card = (out / "README.md").read_text()
    assert "delta-norms" in yaml.safe_load(card.split("---")[1])["tags"]
    assert NORMS.card_note in card

    again = tmp_path / "again"
    exported = runner.invoke(
        cli, ["export", str(out / "delta.safetensors"), "--delta-norms", "--out", str(again)]
    )
    assert exported.exit_code == 0, exported.output
    assert json.loads((again / NORMS_FILE).read_text()) == written
