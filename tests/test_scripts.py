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
