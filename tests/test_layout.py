"""The one rule for which files belong to a release, shared by card, history, push, audit."""

from __future__ import annotations

from pathlib import Path

from locopack.release.card import card_files
from locopack.release.layout import hashed_files, locate, relative_location, release_files


def _release(folder: Path) -> Path:
    for name in (
        "recipe.yaml",
        "README.md",
        "history.jsonl",
        "delta.safetensors",
        "merged/model_index.json",
        "merged/history.jsonl",
        "merged/unet/config.json",
        "cache/window0.json",  # the sweep's cache stays on the build machine
        ".merged.ab12.tmp/unet/config.json",  # left by an interrupted atomic write
        ".delta.safetensors.x1.tmp",
        ".locopack.lock",
    ):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    return folder


def test_interrupted_writes_caches_and_hidden_files_are_not_part_of_a_release(tmp_path):
    folder = _release(tmp_path)
    assert release_files(folder) == [
        "README.md",
        "delta.safetensors",
        "history.jsonl",
        "merged/history.jsonl",
        "merged/model_index.json",
        "merged/unet/config.json",
        "recipe.yaml",
    ]
    assert set(hashed_files(folder)) == set(release_files(folder)) - {
        "history.jsonl",
        "merged/history.jsonl",
    }
    assert "README.md" not in card_files(folder) and "recipe.yaml" in card_files(folder)


def test_locations_are_relative_and_never_spell_out_the_machine(tmp_path):
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "out" / "rel").mkdir(parents=True)
    release = tmp_path / "out" / "rel"
    assert relative_location(str(tmp_path / "models" / "base"), release) == "../../models/base"
    assert relative_location("org/name", release) == "org/name"
    assert relative_location("/", release) is None  # sharing only the root: nothing recorded
    assert locate(release, "../../models/base") == str(release / "../../models/base")
    assert locate(release, "../../gone", "org/name") == "org/name"
    assert locate(release, "../../gone", "./also-gone") is None
