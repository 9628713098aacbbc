"""A release folder holds only what the build made: no symbolic links (never listed, never
written through), no other recipe's files unless --replace removes exactly those, and one
writer at a time for every command that writes into it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from locopack.cli import cli
from locopack.delta import WeightDelta
from locopack.errors import ExportError
from locopack.pipeline.lock import build_lock
from locopack.release.audit import audit_folder
from locopack.release.history import entry_hash, read_history, write_history
from locopack.release.layout import hashed_files, links, release_files
from locopack.release.records import HistoryEntry
from locopack.storage import atomic_dir, atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
RECIPE = (ROOT / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A twin with its scorer, and a recipe that builds on it."""
    root = tmp_path_factory.mktemp("folder")
    result = CliRunner().invoke(cli, ["--threads", "1", "twin", "sd1", str(root / "twin")])
    assert result.exit_code == 0, result.output
    (root / "recipe.yaml").write_text(RECIPE.replace("./out/tiny-sd1", str(root / "twin")))
    return root


def _build(world: Path, out: Path, *extra: str):
    args = ["--threads", "1", "build", str(world / "recipe.yaml"), "--out", str(out), *extra]
    return CliRunner().invoke(cli, args)


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error: ")]
    return line


def _contents(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` but hidden ones (the lock),
    links not followed."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.name.startswith(".")
    }


def _other_release(folder: Path, name: str = "someone-else") -> Path:
    """The files of another recipe's release and a history entry recording them (no model)."""
    for relative, data in {
        "recipe.yaml": f"version: 1\nname: {name}\n",
        "README.md": "# another release\n",
        "delta.safetensors": "not read",
        "evidence/before.png": "image",
        "merged/unet/config.json": "{}",
        "cache/window.json": "{}",
    }.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(data)
    text = (folder / "recipe.yaml").read_text()
    entry = HistoryEntry(
        index=0,
        recipe_name=name,
        recipe_sha256=hashlib.sha256(text.encode()).hexdigest(),
        recipe_text=text,
        files=hashed_files(folder),
    )
    write_history(folder, [entry])  # and merged/'s copy
    return folder


# --- links ----------------------------------------------------------------------------------


def _linked_folder(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    (outside / "elsewhere").mkdir(parents=True)
    (outside / "secret.txt").write_text("not for the Hub")
    (outside / "elsewhere" / "a.png").write_text("image")
    release = tmp_path / "release"
    release.mkdir()
    (release / "README.md").write_text("# card\n")
    (release / "notes.txt").symlink_to("../outside/secret.txt")
    (release / "evidence").symlink_to("../outside/elsewhere")
    return release


def test_a_release_lists_regular_files_only_and_names_its_links(tmp_path):
    release = _linked_folder(tmp_path)
    assert release_files(release) == ["README.md"]  # neither the link nor what it leads to
    assert links(release) == {
        "evidence": "../outside/elsewhere",
        "notes.txt": "../outside/secret.txt",
    }
    assert list(hashed_files(release)) == ["README.md"]


def test_no_write_under_a_held_folder_goes_through_a_link(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    with build_lock(out):
        (out / "evidence").symlink_to(outside)  # made while the folder is held
        (out / "README.md").symlink_to(outside / "card.md")
        for write in (
            lambda: atomic_write_bytes(out / "evidence" / "set" / "a.png", b"image"),
            lambda: atomic_write_bytes(out / "README.md", b"# card"),
            lambda: atomic_dir(out / "evidence").__enter__(),
        ):
            with pytest.raises(ExportError, match="a symbolic link inside .*never writes through"):
                write()
        atomic_write_bytes(out / "edit.json", b"{}")  # a path without a link is written
    assert list(outside.iterdir()) == []
    # the folder itself may be a link the user named: only what lies inside it is checked
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "named").symlink_to(real)
    with build_lock(tmp_path / "named"):
        atomic_write_bytes(tmp_path / "named" / "edit.json", b"{}")
    assert (real / "edit.json").read_bytes() == b"{}"


@pytest.mark.parametrize("linked", ["evidence", "cache", "merged/unet"])
def test_a_build_refuses_a_folder_with_a_link_and_writes_nothing_outside(world, tmp_path, linked):
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    (out / linked).parent.mkdir(parents=True)
    (out / linked).symlink_to(outside)
    line = _error(_build(world, out))
    assert f"holds symbolic links ({linked} -> {outside})" in line and "regular files" in line
    assert list(outside.iterdir()) == []  # not even the lock file


@pytest.mark.slow  # the module's one build
def test_audit_fails_on_a_link_even_where_the_history_records_it(replaced, tmp_path):
    release = tmp_path / "release"
    shutil.copytree(replaced[0] / "out", release)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not for the Hub")
    (release / "notes.txt").symlink_to("../outside/secret.txt")
    # as a build that followed the link would have recorded it
    entries = read_history(release / "history.jsonl")
    entries[-1].files["notes.txt"] = hashlib.sha256(b"not for the Hub").hexdigest()
    entries[-1].hash = entry_hash(entries[-1])
    write_history(release, entries)
    report = audit_folder(release)
    failed = [c for c in report.checks if not c.ok]
    assert [c.name for c in failed] == ["files"]
    assert failed[0].detail.startswith("notes.txt: a symbolic link (to ../outside/secret.txt)")
    result = CliRunner().invoke(cli, ["audit", str(release)])
    assert "audit failed: files: notes.txt: a symbolic link" in _error(result)
    # evidence moved out of the folder and linked back: the release no longer holds it
    (release / "notes.txt").unlink()
    shutil.move(release / "evidence", tmp_path / "outside" / "evidence")
    (release / "evidence").symlink_to(tmp_path / "outside" / "evidence")
    (failed,) = [c for c in audit_folder(release).checks if not c.ok]
    assert failed.detail.startswith("evidence: a symbolic link")


# --- another recipe's release in --out ------------------------------------------------------


def test_a_folder_with_another_release_is_refused_and_nothing_is_removed(world, tmp_path):
    out = _other_release(tmp_path / "out")
    (out / "evidence" / "mine.png").write_text("the user's own")  # added after that build
    (out / "README.md").write_text("# edited by hand\n")
    before = _contents(out)
    for extra in ((), ("--replace",)):
        line = _error(_build(world, out, *extra))
        assert "holds the release of recipe 'someone-else' and files it did not record" in line
        assert "README.md, evidence/mine.png" in line and "nothing was removed" in line
        assert _contents(out) == before
    (out / "evidence" / "mine.png").unlink()
    (out / "README.md").write_text("# another release\n")
    before = _contents(out)
    line = _error(_build(world, out))
    assert "holds the release of recipe 'someone-else' (7 files); pass --replace" in line
    assert _contents(out) == before


def test_a_folder_of_files_no_build_recorded_is_refused_naming_them(world, tmp_path):
    out = tmp_path / "out"
    (out / "evidence").mkdir(parents=True)
    (out / "evidence" / "holiday.png").write_text("photo")
    (out / "recipe.yaml").write_text("version: 1\nname: unfinished\n")
    before = _contents(out)
    line = _error(_build(world, out, "--replace"))
    assert "holds files that no history.jsonl records (evidence/holiday.png, recipe.yaml)" in line
    assert _contents(out) == before


@pytest.fixture(scope="module")
def replaced(world, tmp_path_factory):
    """A build with --replace into a folder that held another recipe's release."""
    root = tmp_path_factory.mktemp("replaced")
    out = _other_release(root / "out")
    result = _build(world, out, "--replace")
    assert result.exit_code == 0, result.output
    return root, result.output


@pytest.mark.slow  # one build on the twin
def test_replace_removes_exactly_the_recorded_files_and_the_build_audits(replaced):
    root, output = replaced
    out = root / "out"
    assert f"{out}: removed the 7 files of the release of recipe 'someone-else'" in output
    assert "kept cache" in output
    assert (out / "cache" / "window.json").read_text() == "{}"  # never released: kept
    assert not (out / "merged").exists()  # emptied by the removal; this recipe merges nothing
    assert [e.recipe_name for e in read_history(out / "history.jsonl")] == [
        "twin-sd1-erase-van-gogh"
    ]
    assert "delta.safetensors" in release_files(out) and audit_folder(out).ok


# --- one writer ------------------------------------------------------------------------------


def _delta(folder: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    up, down = torch.randn(8, 2, generator=gen), torch.randn(2, 6, generator=gen)
    provenance = {"denoiser": "unet", "sites": ["down.attn2"], "family": "sd1"}
    return WeightDelta({"down.attn2.to_k": up @ down}, provenance).save(folder / "d.safetensors")


def test_export_and_card_refuse_a_folder_another_command_holds(tmp_path):
    delta, out = _delta(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("# the card a build is writing\n")
    export = ["export", str(delta), "--out", str(out)]
    with build_lock(out):  # a build runs
        held = f"another command is writing into this folder (locopack build, pid {os.getpid()}"
        assert held in _error(CliRunner().invoke(cli, export))
        assert held in _error(CliRunner().invoke(cli, ["card", str(out)]))
        assert sorted(release_files(out)) == ["README.md"]
        assert (out / "README.md").read_text() == "# the card a build is writing\n"
    result = CliRunner().invoke(cli, export)  # free again
    assert result.exit_code == 0, result.output
    assert "pytorch_lora_weights.safetensors" in release_files(out)
