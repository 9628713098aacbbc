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


@pytest.mark.slow
def test_bench_attack_prints_every_attack_against_the_four_models_and_their_specificity(tmp_path):
    stripes = ROOT / "recipes" / "toy" / "erase-stripes.yaml"
    command = [sys.executable, str(ROOT / "scripts" / "bench_attack.py"), "--recipes", str(stripes)]
    command += ["--steps", "2", "--tokens", "1", "--candidates", "2", "--seeds", "1"]
    command += ["--soft-steps", "1", "--vector-steps", "2", "--rounds", "1", "--prompts", "1"]
    command += ["--unrelated", "2", "--work", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=True)
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    cells = {row[0].strip(): [c.strip() for c in row[1:]] for row in rows}
    attacks = ["word search", "concept vector (states)", "concept vector (words)"]
    attacks += ["soft prompt (embeddings)", "soft prompt (words)"]
    for name in attacks + ["chance (the prompt without the concept)"]:
        rates = cells[name][1:]  # base, plain, robust, all sites
        assert len(rates) == 4 and all(r.endswith("%") for r in rates), (name, rates)
    assert cells["concept vector (states)"][1] == "100%"  # the base model draws the concept
    seconds = {n: cells[f"{n} (s)"] for n in ("word search", "concept vector", "soft prompt")}
    assert all(len(s) == 3 and all(v.isdigit() for v in s) for s in seconds.values())
    # specificity: the base against itself is exact
    assert cells["base"][1] == "1.000" and int(cells["base"][0].rstrip("%")) >= 50
    assert {"plain", "robust", "all sites"} <= set(cells)
    assert "robust erase (search, concept_vector, soft_prompt; " in done.stdout
    assert "- round 1: stripes " in done.stdout
