"""What a release carries and how it travels: relative locations, umask, kohya metadata,
a release copied elsewhere, and reproduction at both depths."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors import safe_open

from locopack.cli import cli
from locopack.delta import WeightDelta
from locopack.export import write_kohya
from locopack.pipeline.reproduce import Reproduce
from locopack.release.audit import audit_folder
from locopack.release.history import read_history
from locopack.release.layout import release_files
from locopack.storage import atomic_dir, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RECIPE = (ROOT / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()

pytestmark = pytest.mark.slow  # one build on the twin, then audits that re-run the recipe


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A release built from a recipe that names its twin relative to itself."""
    root = tmp_path_factory.mktemp("contract")
    runner = CliRunner()
    assert runner.invoke(cli, ["--threads", "1", "twin", "sd1", str(root / "twin")]).exit_code == 0
    recipe = root / "rel.yaml"
    recipe.write_text(RECIPE.replace("./out/tiny-sd1", "./twin") + "export:\n  merged: true\n")
    result = runner.invoke(cli, ["build", str(recipe), "--out", str(root / "out" / "rel")])
    assert result.exit_code == 0, result.output
    return root


def test_the_release_records_its_base_and_scorer_relative_to_itself(built):
    release = built / "out" / "rel"
    entry = read_history(release / "history.jsonl")[-1]
    assert entry.base_model == "./twin"  # as the recipe wrote it
    assert entry.base_location == "../../twin"
    assert entry.scorer_location == "../../twin/scorer"
    provenance = WeightDelta.load(release / "delta.safetensors").provenance
    assert provenance.base_location == "../../twin" and "base_path" not in provenance.to_json()
    for name in release_files(release):
        assert str(built).encode() not in (release / name).read_bytes(), name


def test_release_files_honour_the_umask(built):
    release = built / "out" / "rel"
    for name in release_files(release):
        assert stat.S_IMODE((release / name).stat().st_mode) & 0o044 == 0o044, name
    assert stat.S_IMODE((release / "merged").stat().st_mode) & 0o055 == 0o055


def test_atomic_writes_take_the_umask_not_mkstemps_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "folder") as tmp:
            (tmp / "inner").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o750


@pytest.mark.parametrize(
    ("family", "header"),
    [
        ("sd1", {"ss_base_model_version": "sd_v1"}),
        ("sd2", {"ss_base_model_version": "sd_v2", "ss_v2": "True"}),
        ("sdxl", {"ss_base_model_version": "sdxl_base_v1-0"}),
    ],
)
def test_kohya_files_tell_loaders_which_base_they_are_for(built, tmp_path, family, header):
    delta = WeightDelta.load(built / "out" / "rel" / "delta.safetensors")
    relabelled = WeightDelta(delta.deltas, delta.provenance.model_copy(update={"family": family}))
    path = write_kohya(relabelled, tmp_path, max_rank=8, energy=0.99999999)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    assert {k: metadata.get(k) for k in header} == header
    if family != "sd2":
        assert "ss_v2" not in metadata


def test_a_release_copied_elsewhere_audits_and_names_the_option_for_its_base(
    built, tmp_path_factory
):
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "rel"
    shutil.copytree(built / "out" / "rel", elsewhere)
    report = audit_folder(elsewhere)
    assert report.ok, [c for c in report.checks if not c.ok]
    merged = next(c for c in report.checks if c.name == "merged")
    assert "skipped" in merged.detail and "--base" in merged.detail
    refused = audit_folder(elsewhere, reproduce=Reproduce.QUICK)
    assert not refused.ok and "--base" in refused.checks[-1].detail
    pointed = audit_folder(elsewhere, reproduce=Reproduce.QUICK, base=str(built / "twin"))
    assert pointed.ok, [c for c in pointed.checks if not c.ok]
    assert any("merged/unet equals base + delta" in c.detail for c in pointed.checks)


def test_full_reproduction_reruns_the_localization_and_says_which_depth_ran(built):
    release = built / "out" / "rel"
    result = CliRunner().invoke(cli, ["audit", str(release), "--reproduce", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["reproduce"] == "full"
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["reproduce localization"]["ok"]
    assert "same window" in checks["reproduce localization"]["detail"]
    assert checks["reproduce"]["ok"] and "re-localized" in checks["reproduce"]["detail"]
    quick = CliRunner().invoke(cli, ["audit", str(release), "--reproduce", "quick", "--json"])
    report = json.loads(quick.output[quick.output.index("{") :])
    assert report["reproduce"] == "quick"
    assert "reproduce localization" not in {c["name"] for c in report["checks"]}
    assert any("layer choice was not re-checked" in c["detail"] for c in report["checks"])


def test_full_reproduction_catches_a_rewritten_localization(built, tmp_path):
    release = tmp_path / "rel"
    shutil.copytree(built / "out" / "rel", release)
    path = release / "localization.json"
    data = json.loads(path.read_text())
    data["candidates"][0]["scores"][0] += 0.5  # a score the sweep never produced
    path.write_text(json.dumps(data))
    twin = str(built / "twin")
    report = audit_folder(release, reproduce=Reproduce.FULL, base=twin, scorer=twin + "/scorer")
    checks = {c.name: c for c in report.checks}
    assert not checks["reproduce localization"].ok
    assert "largest score difference 5.0e-01" in checks["reproduce localization"].detail
