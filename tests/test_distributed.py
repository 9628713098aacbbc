"""The sweep and batch builds under `accelerate launch` with 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from locopack.cli import cli
from locopack.delta import WeightDelta
from locopack.distributed import launch_command

pytest.importorskip("accelerate")
ROOT = Path(__file__).resolve().parents[1]
RECIPE = (ROOT / "recipes" / "twin" / "sd1-erase-van-gogh.yaml").read_text()
pytestmark = pytest.mark.slow


def _launch(*args, procs=2, **kwargs):
    command = [
        *launch_command(procs),
        "-m",
        "locopack",
        "--threads",
        "1",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, **kwargs)


def _single(*args):
    command = [sys.executable, "-m", "locopack", "--threads", "1", *args]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    result = CliRunner().invoke(cli, ["--threads", "1", "twin", "sd1", str(root / "twin")])
    assert result.exit_code == 0, result.output
    for name, concept in (("alpha", "van gogh"), ("beta", "monet")):
        text = (
            RECIPE.replace("./out/tiny-sd1", str(root / "twin"))
            .replace("twin-sd1-erase-van-gogh", name)
            .replace("van gogh", concept)
        )
        (root / "recipes").mkdir(exist_ok=True)
        (root / "recipes" / f"{name}.yaml").write_text(text)
    return root


def _scores(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {
        "chosen": data["chosen"],
        "candidates": [c["scores"] for c in data["candidates"]],
        "references": [data["baseline"]["scores"], data["all_sites"]["scores"]],
    }


def test_two_process_sweep_equals_one_process_and_resumes_across_counts(world):
    recipe = world / "recipes" / "alpha.yaml"
    single = world / "single"
    result = CliRunner().invoke(
        cli, ["localize", str(recipe), "--out", str(single), "--full", "--batch", "4"]
    )
    assert result.exit_code == 0, result.output

    crashed = world / "crashed"
    proc = _single("localize", str(recipe), "--out", str(crashed), "--full", "--batch", "4")
    deadline = time.time() + 120
    while time.time() < deadline and len(list((crashed / "cache").glob("*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list((crashed / "cache").glob("*.json")))
    assert 3 <= finished < 15

    run = _launch(
        "localize", str(recipe), "--out", str(crashed), "--full", "--batch", "4", timeout=1200
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "windows shared by 2 processes" in run.stdout
    assert _scores(crashed / "localization.json") == _scores(single / "localization.json")
    reused = re.search(r"^sweep [\d.]+ s; (\d+) of \d+ scores taken from", run.stdout, re.M)
    assert int(reused.group(1)) >= finished


def test_batch_build_with_two_processes_equals_building_alone(world):
    batch = world / "batch"
    run = _launch("build", str(world / "recipes"), "--out", str(batch), timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    alone = world / "alone"
    shutil.rmtree(alone, ignore_errors=True)
    for name in ("alpha", "beta"):
        result = CliRunner().invoke(
            cli, ["build", str(world / "recipes" / f"{name}.yaml"), "--out", str(alone / name)]
        )
        assert result.exit_code == 0, result.output
        a = WeightDelta.load(batch / name / "delta.safetensors")
        b = WeightDelta.load(alone / name / "delta.safetensors")
        assert a.sha256() == b.sha256()
        assert _scores(batch / name / "localization.json") == _scores(
            alone / name / "localization.json"
        )
        assert (batch / name / "README.md").is_file()
