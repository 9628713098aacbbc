"""Release files are byte-reproducible: the same recipe, base and versions give the same bytes,
into another folder and after a build killed mid-way; times live in the history entry only."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from locopack.cli import cli
from locopack.release.audit import audit_folder
from locopack.release.history import read_history
from locopack.release.layout import (
    DELTA_FILE,
    EVIDENCE_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    release_files,
)
from locopack.storage import load_tensors

from .conftest import TOY_RECIPE

#: what may differ between two builds: when, and how long each stage took (and so the hash)
TIME_FIELDS = ("time", "seconds", "hash")


#: two processes: safetensors writes its metadata in a hash order drawn per process
SAVE_IN_A_PROCESS = """
import sys, torch
from locopack.storage import save_tensors
metadata = {f"key{i}": "value\\n" * i for i in range(8)}
save_tensors({"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(3)}, sys.argv[1], metadata)
"""


def test_safetensors_files_of_the_same_tensors_and_metadata_are_the_same_bytes(tmp_path):
    for name in ("one", "two"):
        command = [sys.executable, "-c", SAVE_IN_A_PROCESS, str(tmp_path / name)]
        subprocess.run(command, check=True, capture_output=True)
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()
    tensors, metadata = load_tensors(tmp_path / "one")
    assert metadata["key2"] == "value\nvalue\n" and tensors["b"][1, 2] == 5.0


def _build_args(out: Path) -> list[str]:
    return ["--threads", "1", "build", str(TOY_RECIPE), "--out", str(out)]


def _differences(first: Path, second: Path) -> list[str]:
    """The release files (history aside) that differ in bytes or are in one folder only."""
    names = set(release_files(first)) | set(release_files(second))
    return sorted(
        name
        for name in names
        if Path(name).name != HISTORY_FILE and not _same(first / name, second / name)
    )


def _same(one: Path, other: Path) -> bool:
    return one.is_file() and other.is_file() and one.read_bytes() == other.read_bytes()


def _entry_but_times(folder: Path) -> dict:
    (entry,) = read_history(folder / HISTORY_FILE)
    assert set(entry.seconds) == {"localize", "edit", "export", "evidence", "card"}
    return {key: value for key, value in entry.to_json().items() if key not in TIME_FIELDS}


@pytest.mark.slow
def test_two_builds_of_the_toy_recipe_give_the_same_bytes(toy_release, tmp_path):
    out = tmp_path / "another-name"  # the same depth below the temporary root
    result = CliRunner().invoke(cli, _build_args(out))
    assert result.exit_code == 0, result.output
    assert len(release_files(out)) > 10 and _differences(toy_release, out) == []
    assert _entry_but_times(out) == _entry_but_times(toy_release)
    assert audit_folder(out).ok


@pytest.mark.slow
def test_a_build_killed_during_its_evidence_resumes_to_the_same_bytes(toy_release, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "locopack", *_build_args(out)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not (out / MANIFEST_FILE).exists():
        time.sleep(0.05)  # the exports are written: the evidence (about 40 s) has started
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / DELTA_FILE).is_file() and not (out / EVIDENCE_FILE).exists()
    assert not (out / HISTORY_FILE).exists(), "the kill must land before the build ends"

    result = CliRunner().invoke(cli, _build_args(out))
    assert result.exit_code == 0, result.output
    assert "resuming the build" in result.output and "edit: reused" in result.output
    assert _differences(toy_release, out) == []
    assert _entry_but_times(out) == _entry_but_times(toy_release)
    assert audit_folder(out).ok
