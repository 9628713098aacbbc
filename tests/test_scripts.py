"""The benchmark scripts run (at a CI-friendly size) and print their figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench_localize(*args: str) -> str:
    """What ``scripts/bench_localize.py ARGS`` prints."""
    command = [sys.executable, str(ROOT / "scripts" / "bench_localize.py"), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=True)
    return done.stdout  # the timeout only guards against a hang


@pytest.mark.slow
def test_bench_localize_prints_both_loops_and_their_agreement():
    out = _bench_localize("--steps", "2", "--seeds", "0")
    assert "(a) paper-style loop" in out and "(b) locopack fast" in out
    assert "speed-up (a)/(b):" in out and "chosen window: paper" in out
    assert "Spearman correlation" in out


@pytest.mark.slow
def test_bench_localize_takes_model_probes_and_settings_from_a_recipe():
    out = _bench_localize(
        "--recipe", str(ROOT / "recipes" / "toy" / "erase-stripes.yaml"), "--steps", "4"
    )
    # the toy world has 7 sites; the recipe: window 4, 4 probes, seed 0, CFG 4; --steps overrides
    header = (
        "toy-world (Stable Diffusion 1.x), 4 windows of 4, 4 probes x 1 seeds, 4 steps, CFG 4.0"
    )
    assert header in out, out
    assert "the screening pass alone would choose" in out


@pytest.mark.slow
def test_bench_localize_sweeps_plantings_of_both_layouts():
    out = _bench_localize("--sweep", "--steps", "5", "--seeds", "0", "--probes", "2")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["sd1"], ["sdxl70"])]
    assert {row[0] for row in rows} == {"sd1", "sdxl70"} and len(rows) >= 6
    assert all(row[5] == "yes" for row in rows), out  # fast chooses what full chooses
    assert f"fast equals full on {len(rows)} of {len(rows)} plantings" in out
    assert "70-site twin, planted 30: paper loop" in out
