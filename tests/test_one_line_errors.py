"""Failures that used to end in a traceback: each is now one line ``error: ...``, exit 1.

The Hub out of reach, a pipeline folder missing a part, a file size or memory limit, a
read-only output folder, settings the model cannot run, unknown detector options, and paths
too long for the file system.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from locopack.cli import cli

ROOT = Path(__file__).resolve().parents[1]
TWIN_RECIPE = (ROOT / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()


def _one_line(result) -> str:
    """The single ``error:`` line of a failed command (exit 1, no traceback)."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


def _one_line_of(process: subprocess.CompletedProcess) -> str:
    assert process.returncode == 1, process.stderr[-3000:]
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
    errors = [line for line in process.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, process.stderr[-3000:]
    return errors[0]


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["--threads", "1", *args])


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> Path:
    """A tiny SD-1.x twin and its scorer (``locopack twin sd1``)."""
    root = tmp_path_factory.mktemp("one-line")
    result = _invoke("twin", "sd1", str(root / "twin"))
    assert result.exit_code == 0, result.output
    return root / "twin"


def _recipe(folder: Path, base: Path, scorer: Path, extra: str = "", **replace: str) -> Path:
    """The twin recipe on ``base``, with ``extra`` YAML appended and lines replaced."""
    text = TWIN_RECIPE.replace("./out/tiny-sd1/scorer", str(scorer))
    text = text.replace("./out/tiny-sd1", str(base))
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = folder / "recipe.yaml"
    path.write_text(text + extra)
    return path


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the Hub out of reach ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("localize", "--plan", str(ROOT / "recipes" / "examples" / "sd35-remove-van-gogh.yaml")),
        ("layers", "nobody-here/no-model"),
    ],
    ids=["localize-plan", "layers"],
)
def test_no_network_is_one_line_whatever_hf_hub_offline_says(tmp_path, args):
    # HF_ENDPOINT is read when huggingface_hub is imported: a fresh process, pointed at a port
    # nobody listens on, with HF_HUB_OFFLINE unset (the tests' conftest sets it)
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HOME": str(tmp_path)}
    process = subprocess.run(
        [sys.executable, "-m", "locopack", "--threads", "1", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = _one_line_of(process)
    assert line.startswith("error: offline: "), line
    assert "cannot reach the Hub at http://127.0.0.1:" in line
    assert "set HF_HUB_OFFLINE=1" in line


# --- a pipeline folder missing a part ----------------------------------------------------------


@pytest.mark.parametrize(
    ("removed", "named"),
    [
        ("tokenizer", "tokenizer/tokenizer_config.json or tokenizer.json is missing"),
        ("text_encoder/config.json", "text_encoder/config.json is missing"),
    ],
)
@pytest.mark.parametrize("command", [("validate",), ("localize", "--plan")])
def test_a_pipeline_missing_a_part_is_named(twin, tmp_path, removed, named, command):
    # diffusers builds a default part in its place: an empty tokenizer (OverflowError on
    # max_length at the first prompt) or a text encoder of the default shape (size mismatch)
    base = tmp_path / "base"
    shutil.copytree(twin, base, ignore=shutil.ignore_patterns("scorer"))
    target = base / removed
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    recipe = _recipe(tmp_path, base, twin / "scorer")
    line = _one_line(_invoke(*command, str(recipe)))
    part = base / removed.split("/")[0]
    assert f"base.model: expected a model of a supported family: {part}: " in line
    assert named in line and "download the model again" in line


# --- paths too long ------------------------------------------------------------------------


def test_a_path_too_long_for_the_file_system_is_one_line(twin, tmp_path):
    recipe = _recipe(tmp_path, tmp_path / ("b" * 300), twin / "scorer")
    line = _one_line(_invoke("validate", str(recipe)))
    assert line.startswith("error: path too long for the file system: ")
    assert "(locopack validate); shorten it" in line
    assert len(line) < 400  # the path is shortened in the middle


# --- detector options ------------------------------------------------------------------------


def test_an_unknown_detector_option_is_refused_before_any_image(twin, tmp_path):
    from locopack.errors import RecipeError
    from locopack.evidence.detectors import load_detector

    extra = "evidence:\n  detectors: [clip, {name: toy, options: {bogus: 1}}]\n"
    recipe = _recipe(tmp_path, twin, twin / "scorer", extra)
    line = _one_line(_invoke("validate", str(recipe)))
    assert f"{recipe}:" in line and "evidence.detectors[1].options: unknown option 'bogus'" in line
    assert "toy (it takes no options); remove it" in line
    # the build checks its detectors before any stage: never a TypeError after the edit
    with pytest.raises(RecipeError, match="unknown option 'treshold' for nudenet .*threshold"):
        load_detector("nudenet", {"treshold": 0.3})
    assert load_detector("toy", {}).options == {}


# --- limits of the machine -------------------------------------------------------------------


OPENBLAS_GAVE_UP = "OpenBLAS error: Memory allocation still failed"


def _limited_build(recipe: Path, out: Path, limit: int, size: int) -> subprocess.CompletedProcess:
    """``locopack build`` in a process under the resource ``limit`` of ``size``."""
    import resource
    import signal

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(limit, (size, size))

    command = [sys.executable, "-m", "locopack", "--threads", "1", "build", str(recipe)]
    return subprocess.run(
        [*command, "--out", str(out)],
        preexec_fn=limited,
        env={k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_file_size_limit_names_the_stage(twin, tmp_path):
    import resource

    # explicit layers: no sweep; the first file over 8 KiB is the edit's delta (about 10 KiB),
    # where safetensors used to raise "SafetensorError: File too large"
    recipe = _recipe(tmp_path, twin, twin / "scorer", **{"  mode: fast": "  layers: [0, 1]"})
    line = _one_line_of(_limited_build(recipe, tmp_path / "out", resource.RLIMIT_FSIZE, 8192))
    assert line.startswith("error: file size limit reached while writing "), line
    assert "(the edit stage): raise it (ulimit -f unlimited)" in line


def test_a_read_only_output_folder_is_one_line(twin, tmp_path, monkeypatch):
    import locopack.pipeline.lock

    # a finished release on a read-only mount: its lock file exists but cannot be opened for
    # writing.  As root no chmod stops a write and a read-only mount needs privileges, so the
    # lock's open fails the way it does there (EROFS)
    class ReadOnlyLock(locopack.pipeline.lock.FileLock):
        def acquire(self, *args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system", self.lock_file)

    monkeypatch.setattr(locopack.pipeline.lock, "FileLock", ReadOnlyLock)
    out = tmp_path / "release"
    (out / "cache").mkdir(parents=True)
    (out / locopack.pipeline.lock.LOCK_FILE).touch()
    recipe = _recipe(tmp_path, twin, twin / "scorer")
    for command in ("build", "edit"):
        line = _one_line(_invoke(command, str(recipe), "--out", str(out)))
        assert line.startswith(f"error: read-only file system for {out}/cache/.build.lock ")
        assert "the folder cannot be written; pass another --out" in line


# --- settings the model cannot run -----------------------------------------------------------


def test_more_steps_than_the_scheduler_can_take_are_refused(twin, tmp_path):
    # the twin's PNDM scheduler: 1000 trained timesteps, leading spacing, steps_offset 1; at
    # 1000 steps its first timestep is 1000, and the first step raised an IndexError
    recipe = _recipe(tmp_path, twin, twin / "scorer", **{"  steps: 4": "  steps: 1000"})
    line = _one_line(_invoke("validate", str(recipe)))
    assert line.startswith(f"error: {recipe}:")
    assert "localize.steps: expected at most 999 (what this model's scheduler can take)" in line
    recipe = _recipe(tmp_path, twin, twin / "scorer", **{"  steps: 4": "  steps: 999"})
    assert _invoke("validate", str(recipe)).exit_code == 0


def test_a_resolution_the_vae_and_patches_cannot_draw_is_refused(twin, tmp_path):
    import json

    # the configs of a model whose VAE scales by 16 (five blocks); validate reads no weights
    base = tmp_path / "base"
    shutil.copytree(twin, base, ignore=shutil.ignore_patterns("scorer"))
    config = json.loads((base / "vae" / "config.json").read_text())
    config["block_out_channels"] = [8] * 5
    (base / "vae" / "config.json").write_text(json.dumps(config))
    for size in (8, 24):
        extra = {"  mode: fast": f"  mode: fast\n  resolution: {size}"}
        recipe = _recipe(tmp_path, base, twin / "scorer", **extra)
        line = _one_line(_invoke("validate", str(recipe)))
        expected = "expected a multiple of 16 (this model's VAE scale factor times its patch size)"
        assert f"localize.resolution: {expected}, found {size}" in line
    recipe = _recipe(tmp_path, base, twin / "scorer", **{"  mode: fast": "  resolution: 32"})
    assert _invoke("validate", str(recipe)).exit_code == 0


@pytest.mark.slow
def test_a_memory_limit_is_one_line_naming_the_stage(twin, tmp_path):
    import resource

    # under an address-space limit the failure takes many forms: MemoryError, a shared library
    # that cannot be mapped, torch's allocator, oneDNN's "could not create a primitive"; at
    # 1.0 GiB it came while loading, at 1.1-1.2 GiB in the evidence (1.3 GiB was enough).  At
    # any of these limits OpenBLAS may instead give up inside a BLAS call and end the process
    # itself ("Memory allocation still failed after 10 retries", seen at 1.0 and at 1.2 GiB on
    # different machines): nothing in Python can catch it, so such a limit proves nothing and
    # the next one is tried.  Every other failure must be the one line
    recipe = _recipe(tmp_path, twin, twin / "scorer", **{"  mode: fast": "  layers: [0, 1]"})
    failed = 0
    for gib in (1.0, 1.1, 1.2):
        out = tmp_path / f"out-{gib}"
        process = _limited_build(recipe, out, resource.RLIMIT_AS, int(gib * 2**30))
        if process.returncode == 0 or OPENBLAS_GAVE_UP in process.stderr:
            continue
        line = _one_line_of(process)
        assert line.startswith("error: out of memory in "), line
        assert "raise the memory limit (ulimit -v)" in line
        failed += 1
    assert failed, "no limit was low enough to make the build fail"
