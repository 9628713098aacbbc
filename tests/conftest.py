"""Shared fixtures: offline, single-threaded, home redirected, tiny twins built once."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

FAMILY_NAMES = ("sd1", "sd2", "sdxl", "if", "pixart")
TOY_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "toy" / "erase-stripes.yaml"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep every test away from the user's home, Hub cache and tokens."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / ".cache" / "huggingface"))
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture(scope="session")
def twin_dirs(tmp_path_factory):
    """{family name: folder} of every family's tiny twin, saved with ``save_pretrained``."""
    from locopack.models import get_family

    root = tmp_path_factory.mktemp("twins")
    return {name: get_family(name).save_twin(root / name, seed=0) for name in FAMILY_NAMES}


@pytest.fixture(scope="session")
def twin_pipes(twin_dirs):
    """{family name: (pipeline, family)} loaded back from the saved twins."""
    from locopack.models import load_pipeline

    return {name: load_pipeline(str(path)) for name, path in twin_dirs.items()}


@pytest.fixture(scope="session")
def toy_release(tmp_path_factory):
    """The toy world's stripes erase (``TOY_RECIPE``), built once by ``locopack build`` (about
    a minute); tests only read it."""
    from click.testing import CliRunner

    from locopack.cli import cli

    out = tmp_path_factory.mktemp("toy") / "erase-stripes"
    command = ["--threads", "1", "build", str(TOY_RECIPE), "--out", str(out)]
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
    return out
