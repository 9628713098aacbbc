"""``localize --plan`` counts the denoiser passes the sweep really runs, for every family (a
hook on each twin's denoiser counts them), and plans from the configs alone when the weights
are not on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from locopack.localize import localize, plan_sweep
from locopack.models import LoadedBase, get_family
from locopack.recipe import parse_recipe

from .family_checks import RECIPE, layout_folder
from .family_checks import recipe as planned
from .test_models_dit import REAL_LAYOUTS

ROOT = Path(__file__).resolve().parents[1]
FLUX = "black-forest-labs/FLUX.1-schnell"
#: families whose twins conftest builds once per session; the others are built here
SESSION = ("sd1", "sdxl", "if", "pixart")
BUILT = ("sd3", "flux", "flux2", "sana", "chroma", "z-image", "lumina2", "qwen-image")


@pytest.fixture(scope="module")
def built_pipes():
    return {name: (get_family(name).build_twin(seed=0), get_family(name)) for name in BUILT}


def _counted_sweep(pipe, family, recipe, batch: int) -> int:
    """Images through one denoising step, summed over every denoiser call of a sweep that
    runs to its end (a text-refiner family's swap also runs the text prefix alone, in a call
    stopped after the refiner: a few text rows, not a pass)."""
    denoiser = getattr(pipe, family.denoiser_attr)
    seen = []

    def count(_module, args, kwargs, _output):
        named = kwargs.get("hidden_states", kwargs.get("sample", kwargs.get("x")))
        latent = args[0] if args else named
        seen.append(len(latent) if isinstance(latent, list) else latent.shape[0])  # Z-Image: a list

    handle = denoiser.register_forward_hook(count, with_kwargs=True)
    try:
        scorer = lambda images, _texts: [0.0] * len(images)  # noqa: E731
        localize(LoadedBase(pipe, family), recipe, scorer=scorer, progress=False, batch=batch)
    finally:
        handle.remove()
    return sum(seen)


#: every family at the default batch; the reference lines' blocks at batches 1 and 2
CASES = [(n, 3.0, 8) for n in SESSION + BUILT] + [
    ("sd3", 3.0, 1),
    ("sd3", 1.0, 2),
    ("flux", 3.0, 2),
    ("sd1", 3.0, 2),
    ("chroma", 1.0, 8),
    ("qwen-image", 1.0, 2),
]


@pytest.mark.parametrize(("name", "guidance", "batch"), CASES)
def test_the_plan_counts_every_pass_a_hook_on_the_denoiser_counts(
    name, guidance, batch, twin_pipes, built_pipes
):
    pipe, family = built_pipes[name] if name in BUILT else twin_pipes[name]
    resolution = {"if": 64, "sana": 32, "z-image": 32, "lumina2": 32}.get(name, 16)
    recipe = planned(window=2, guidance=guidance, resolution=resolution)
    sites = len(family.sites(getattr(pipe, family.denoiser_attr)))
    plan = plan_sweep(recipe, family, sites, batch=batch, scheduler=pipe.scheduler)
    assert plan.full_passes == plan.mode_passes == _counted_sweep(pipe, family, recipe, batch)


def test_the_text_stream_run_alongside_doubles_a_joint_window(built_pipes):
    recipe = planned(window=2)
    plain, joint = get_family("sd1"), get_family("sd3")
    # the same sweep shape: SD3 pays its windows twice, and its pooled line once more
    assert plan_sweep(recipe, joint, 5).full_passes > 2 * plan_sweep(recipe, plain, 5).full_passes
    assert joint.denoiser_passes(3, 3.0, True) == 12 and plain.denoiser_passes(3, 3.0, True) == 6
    # FLUX.1's guidance_scale is the distilled model's input, not classifier-free guidance
    assert get_family("flux").denoiser_passes(3, 3.0, False) == 3


def _plan(recipe: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "locopack", "--threads", "1", "localize", "--plan", str(recipe)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_plan_of_an_example_recipe_comes_from_the_configs_without_weights(tmp_path):
    example = ROOT / "recipes" / "examples" / "flux-schnell-remove-snoopy.yaml"
    model = layout_folder(tmp_path / "flux-configs", *REAL_LAYOUTS[FLUX])
    text = example.read_text().replace(FLUX, str(model))
    (tmp_path / "r.yaml").write_text(text)
    process = _plan(tmp_path / "r.yaml", tmp_path / "home")
    assert process.returncode == 0, process.stderr
    recipe = parse_recipe(text, "r.yaml")
    expected = plan_sweep(recipe, get_family("flux"), 57)
    assert f"full: {expected.full_passes:,} denoiser passes\n" in process.stdout
    assert f" fast: {expected.mode_passes:,} denoiser passes at most" in process.stdout
    assert "the time needs the weights" in process.stdout
    assert "no transformer/*.safetensors on this machine" in process.stdout
    # offline with nothing cached: one line, not a traceback
    process = _plan(example, tmp_path / "empty-home")
    assert process.returncode == 1 and process.stdout == ""
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "HF_HUB_OFFLINE" in lines[0]


def test_the_plan_times_a_pass_where_the_weights_are_here(tmp_path, twin_dirs):
    from locopack.models.twin_parts import tiny_clip_model

    clip, tokenizer = tiny_clip_model(0)
    clip.save_pretrained(tmp_path / "scorer")
    tokenizer.save_pretrained(tmp_path / "scorer")
    text = RECIPE.format(
        model=twin_dirs["sd1"], window=2, steps=2, guidance=3.0, mode="full", resolution=16
    )
    (tmp_path / "r.yaml").write_text(text.replace("scorer: ./unused", f"scorer: {tmp_path}/scorer"))
    process = _plan(tmp_path / "r.yaml", tmp_path / "home")
    assert process.returncode == 0, process.stderr
    assert "one denoiser pass timed here" in process.stdout and "about" in process.stdout
