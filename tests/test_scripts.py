"""The benchmark scripts run (at a CI-friendly size) and print their figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_localize_prints_both_loops_and_their_agreement():
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_localize.py"),
            "--steps",
            "2",
            "--seeds",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = done.stdout
    assert "(a) paper-style loop" in out and "(b) locopack fast" in out
    assert "speed-up (a)/(b):" in out and "chosen window: paper" in out
    assert "Spearman correlation" in out


@pytest.mark.slow
def test_bench_localize_takes_model_probes_and_settings_from_a_recipe():
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_localize.py"),
            "--recipe",
            str(ROOT / "recipes" / "toy" / "erase-stripes.yaml"),
            "--steps",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    # the toy world has 7 sites; the recipe: window 4, 4 probes, seed 0, CFG 4; --steps overrides
    header = (
        "toy-world (Stable Diffusion 1.x), 4 windows of 4, 4 probes x 1 seeds, 4 steps, CFG 4.0"
    )
    assert header in done.stdout, done.stdout
    assert "the screening pass alone would choose" in done.stdout
