"""`locopack build` under trouble: two writers, a full disk, no memory, a kill, bad bases."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors import SafetensorError

from locopack.cli import cli
from locopack.delta import WeightDelta
from locopack.errors import FolderLockedError
from locopack.pipeline.lock import HOLDER_FILE, LOCK_FILE, build_lock
from locopack.pipeline.resources import as_resource_error
from locopack.release.audit import audit_folder
from locopack.release.layout import is_local_only
from locopack.storage import load_tensors, remove_leftovers, save_tensors

ROOT = Path(__file__).resolve().parents[1]
RECIPE = (ROOT / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()
#: generous: a twin build takes about a minute on a busy two-core machine
BUILD_TIMEOUT = 900


def _recipe(folder: Path, base: Path, name: str, extra: str = "") -> Path:
    text = RECIPE.replace("./out/tiny-sd1/scorer", str(folder / "scorer"))
    text = text.replace("./out/tiny-sd1", str(base)).replace("twin-sd1-erase-van-gogh", name)
    path = folder / f"{name}.yaml"
    path.write_text(text + extra)
    return path


def _build(recipe: Path, out: Path):
    return CliRunner().invoke(cli, ["--threads", "1", "build", str(recipe), "--out", str(out)])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A twin, its scorer, and a release ``first`` with a merged checkpoint."""
    root = tmp_path_factory.mktemp("resilience")
    result = CliRunner().invoke(cli, ["--threads", "1", "twin", "sd1", str(root / "twin")])
    assert result.exit_code == 0, result.output
    shutil.copytree(root / "twin" / "scorer", root / "scorer")
    recipe = _recipe(root, root / "twin", "first", "export:\n  merged: true\n")
    result = _build(recipe, root / "first")
    assert result.exit_code == 0, result.output
    return root


def _resumable_copy(world: Path, tmp_path: Path, *removed: str) -> Path:
    out = tmp_path / "first"
    shutil.copytree(world / "first", out)
    for name in removed:
        (out / name).unlink()
    return out


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


# --- the lock -------------------------------------------------------------------------------


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    with build_lock(tmp_path / "out") as killed:
        assert killed == {}
        holder = json.loads((tmp_path / "out" / HOLDER_FILE).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(FolderLockedError, match=f"pid {os.getpid()} on .*, started "):
            with build_lock(tmp_path / "out"):
                pass
    assert not (tmp_path / "out" / HOLDER_FILE).exists()  # released: nobody is named
    with build_lock(tmp_path / "out"):  # and free again
        pass


def test_a_lock_left_by_a_killed_build_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\n"
            "from locopack.pipeline.lock import build_lock\n"
            "with build_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n"
            "    time.sleep(600)\n",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=f"pid {holder.pid} "):
            with build_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with build_lock(tmp_path) as killed:  # the OS dropped the lock with the process
        assert killed["pid"] == holder.pid
        assert json.loads((tmp_path / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert (tmp_path / LOCK_FILE).exists()
    assert is_local_only(Path(LOCK_FILE)) and is_local_only(Path(HOLDER_FILE))  # not released


@pytest.mark.slow
def test_a_second_build_into_the_same_folder_fails_at_once(world, tmp_path):
    recipe = _recipe(world, world / "twin", "concurrent")
    out = tmp_path / "concurrent"
    command = [sys.executable, "-m", "locopack", "--threads", "1", "build", str(recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "first.log").open("w")  # a file: a full pipe would stall the build
    first = subprocess.Popen(
        [*command, "--out", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + BUILD_TIMEOUT
        while not (out / HOLDER_FILE).exists() and first.poll() is None:
            assert time.monotonic() < deadline, "the first build never took the lock"
            time.sleep(0.1)
        started = time.monotonic()
        second = subprocess.run(
            [*command, "--out", str(out)], env=env, capture_output=True, text=True, timeout=300
        )
        seconds = time.monotonic() - started
        assert first.poll() is None, "the first build ended before the second was refused"
        assert second.returncode == 1, second.stderr
        assert "Traceback" not in second.stderr
        held = f"another command is writing into this folder (locopack build, pid {first.pid} "
        assert held in second.stderr
        print(f"the second build was refused in {seconds:.1f} s")
        first.wait(timeout=BUILD_TIMEOUT)
    finally:
        first.kill()
        log.close()
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-2000:]
    assert audit_folder(out).ok
    assert not (out / HOLDER_FILE).exists()


# --- resources ------------------------------------------------------------------------------


def test_resource_failures_are_recognized_in_every_form(tmp_path):
    full = as_resource_error(OSError(errno.ENOSPC, "No space left", "/x/a.png"), "edit", tmp_path)
    assert "disk full while writing /x/a.png (the edit stage)" in str(full)
    rust = SafetensorError('IoError(Os { code: 28, message: "No space left on device" })')
    assert "disk full" in str(as_resource_error(rust, "export", tmp_path))
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "/ro/x")
        except OSError:
            raise RuntimeError("saving failed") from None
    except RuntimeError as chained:  # the cause is found behind another error
        assert str(as_resource_error(chained, "card", tmp_path)).startswith("read-only")
    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")
    assert "out of memory in the localize stage" in str(
        as_resource_error(cpu, "localize", tmp_path)
    )
    assert as_resource_error(ValueError("no"), "edit", tmp_path) is None
    assert as_resource_error(FileNotFoundError(errno.ENOENT, "gone"), "edit", tmp_path) is None


@pytest.mark.slow
def test_a_full_disk_ends_in_one_line_and_the_rerun_resumes(world, tmp_path, monkeypatch):
    import safetensors.torch

    out = _resumable_copy(world, tmp_path, "delta.safetensors", "history.jsonl")

    def full(*args, **kwargs):
        raise SafetensorError(
            "Error while serializing: IoError(Os { code: 28, kind: "
            'StorageFull, message: "No space left on device" })'
        )

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", full)  # storage imports it when saving
        line = _one_error_line(_build(out / "recipe.yaml", out))
    assert f"disk full while writing {out} (the edit stage)" in line
    assert "rerun the same command" in line
    result = _build(out / "recipe.yaml", out)
    assert result.exit_code == 0, result.output
    assert "[4/6] evidence: reused" in result.output  # the delta came out the same
    assert audit_folder(out).ok


@pytest.mark.slow
def test_running_out_of_memory_ends_in_one_line_and_the_rerun_resumes(world, tmp_path, monkeypatch):
    import locopack.pipeline.build

    out = _resumable_copy(world, tmp_path, "delta.safetensors", "history.jsonl")

    def no_memory(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 1073741824 bytes. Error code 12"
        )

    with monkeypatch.context() as patch:
        patch.setattr(locopack.pipeline.build, "compute_edit", no_memory)
        line = _one_error_line(_build(out / "recipe.yaml", out))
    assert "out of memory in the edit stage" in line and "base.dtype: float16" in line
    result = _build(out / "recipe.yaml", out)
    assert result.exit_code == 0, result.output
    assert audit_folder(out).ok


# --- resuming -------------------------------------------------------------------------------


def test_leftovers_of_interrupted_writes_are_found_anywhere(tmp_path):
    for name in (".a.json.k2j4_x9z.tmp", "evidence/.b.png.1234.tmp", "cache/.c.tmp/x"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("partial")
    (tmp_path / ".merged.old").mkdir()
    kept = ("evidence/a.png", LOCK_FILE, HOLDER_FILE, ".c.tmp")
    for name in kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("kept")
    removed = {p.relative_to(tmp_path).as_posix() for p in remove_leftovers(tmp_path)}
    assert removed == {".a.json.k2j4_x9z.tmp", "evidence/.b.png.1234.tmp", ".merged.old"}
    assert all((tmp_path / name).exists() for name in kept)


@pytest.mark.slow
def test_a_build_killed_after_its_evidence_resumes_without_redoing_it(world, tmp_path, monkeypatch):
    import locopack.evidence.before_after

    # what a kill between the evidence and the card leaves: no card, no history, a partial
    # write, and the record of the killed holder (whose OS lock died with it)
    out = _resumable_copy(world, tmp_path, "README.md", "history.jsonl")
    (out / ".x.1234.tmp").write_text("partial")
    (out / "merged" / ".model_index.json.abcd1234.tmp").write_text("partial")
    dead = {"pid": 4_000_000, "host": "elsewhere", "started": "2026-01-01T00:00:00+00:00"}
    (out / HOLDER_FILE).write_text(json.dumps(dead))

    def redo(*args, **kwargs):
        raise AssertionError("the evidence was drawn again")

    monkeypatch.setattr(locopack.evidence.before_after, "collect_evidence", redo)
    started = time.monotonic()
    result = _build(out / "recipe.yaml", out)
    seconds = time.monotonic() - started
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "resuming the build (pid 4000000, started 2026-01-01T00:00:00+00:00)" in result.output
    assert "removed 2 temporary file(s)" in result.output
    reused = [line for line in lines if ": reused (" in line]
    assert [line.split(":")[0] for line in reused] == [
        "[1/6] localize",
        "[2/6] edit",
        "[4/6] evidence",
    ]
    assert "[4/6] evidence: reused (complete for this recipe and delta)" in reused
    assert "[5/6] card done" in result.output and "[6/6] history done" in result.output
    print(f"the resumed build took {seconds:.1f} s")
    assert not [p for p in out.rglob("*.tmp")] and not (out / HOLDER_FILE).exists()
    assert audit_folder(out).ok


@pytest.mark.slow
def test_evidence_of_another_delta_is_drawn_again(world, tmp_path):
    out = _resumable_copy(world, tmp_path, "history.jsonl")
    delta = WeightDelta.load(out / "delta.safetensors")
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["inputs"]["delta_sha256"] == delta.sha256()
    evidence["inputs"]["delta_sha256"] = "sha256:" + "0" * 64  # as if made with another delta
    (out / "evidence.json").write_text(json.dumps(evidence))
    result = _build(out / "recipe.yaml", out)
    assert result.exit_code == 0, result.output
    assert "[4/6] evidence done in" in result.output
    assert audit_folder(out).ok


# --- damaged bases --------------------------------------------------------------------------


def test_a_base_with_a_nan_weight_is_refused_before_any_sweep(world, tmp_path, monkeypatch):
    import locopack.pipeline.stages

    base = tmp_path / "nan-twin"
    shutil.copytree(world / "twin", base)
    weights = base / "unet" / "diffusion_pytorch_model.safetensors"
    tensors, metadata = load_tensors(weights)
    name = sorted(k for k in tensors if k.endswith("ff.net.2.weight"))[0]
    tensors[name][0, 0] = float("nan")
    save_tensors(tensors, weights, metadata)

    def sweep(*args, **kwargs):
        raise AssertionError("a sweep started on a base with a NaN weight")

    monkeypatch.setattr(locopack.pipeline.stages, "run_localize", sweep)
    line = _one_error_line(_build(_recipe(world, base, "nan"), tmp_path / "nan"))
    assert f"{base}/unet: the weight {name} holds NaN or Inf values" in line


def _flip_data_bytes(path: Path, count: int = 16) -> None:
    """Flip the low bit of ``count`` bytes in the data of a safetensors file (not its header)."""
    data = bytearray(path.read_bytes())
    for i in range(count):
        data[len(data) - 1 - 97 * i] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_a_damaged_copy_of_a_released_base_is_named_by_build_and_audit(world, tmp_path):
    sites = WeightDelta.load(world / "first" / "delta.safetensors").sites
    layers = "".join(f"\n    - {site}" for site in sites)  # explicit: no sweep needed
    recipe = _recipe(world, world / "first" / "merged", "second").read_text()
    recipe = recipe.replace("  mode: fast", f"  mode: fast\n  layers:{layers}")
    (world / "second.yaml").write_text(recipe)
    second = tmp_path / "second"
    result = _build(world / "second.yaml", second)
    assert result.exit_code == 0, result.output
    checks = {c.name: c for c in audit_folder(second).checks}
    assert checks["base"].ok, checks["base"].detail

    damaged = tmp_path / "damaged"
    shutil.copytree(world / "first" / "merged", damaged)
    unet = damaged / "unet" / "diffusion_pytorch_model.safetensors"
    _flip_data_bytes(unet)
    report = audit_folder(second, base=str(damaged))
    failed = [c for c in report.checks if not c.ok]
    assert failed[0].name == "base"
    assert failed[0].detail == (
        f"the base at {damaged} differs from the one this release was built on: {unet}: its "
        "sha256 differs from the record"
    )
    # a build on the damaged copy is refused before anything runs on it
    (world / "third.yaml").write_text(recipe.replace(str(world / "first" / "merged"), str(damaged)))
    line = _one_error_line(_build(world / "third.yaml", tmp_path / "third"))
    assert f"the base {damaged} differs from the release that recorded it ({unet}" in line


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("window: 2", "window: 99"), "localize.window"),
        (('target: "a painting"', 'target: "a painting by van gogh"'), "target"),
        (("scorer: ", "scorer: ./no-such-scorer #"), "localize.scorer"),
    ],
)
def test_a_bad_recipe_fails_build_before_any_model_is_loaded(
    world, tmp_path, monkeypatch, change, field
):
    import locopack.pipeline.build

    def never(*args, **kwargs):
        raise AssertionError("the build started although the recipe cannot work")

    monkeypatch.setattr(locopack.pipeline.build, "run_build", never)
    shutil.copytree(world / "scorer", tmp_path / "scorer")
    recipe = _recipe(tmp_path, world / "twin", "bad")
    text = recipe.read_text()
    assert change[0] in text
    recipe.write_text(text.replace(change[0], change[1], 1))
    result = _build(recipe, tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith(f"error: {recipe}:") and field in result.output, result.output
    assert not (tmp_path / "out").exists()
