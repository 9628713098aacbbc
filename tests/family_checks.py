"""Checks every newer family's tests run alike: a shared planted-window recipe, the sites in
the order their hooks fire, the adapter through the family's own pipeline against the merged
checkpoint, a published layout on the meta device, and the twin recipe built and audited."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from diffusers import DiffusionPipeline

import locopack
from locopack.cli import cli
from locopack.edit import compute_delta
from locopack.export import write_adapter, write_merged
from locopack.localize import localize, prompt_pairs
from locopack.localize.planted import ReferenceScorer, planted_text_window
from locopack.models import LoadedBase, load_denoiser_layout, load_pipeline
from locopack.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]

#: one erase with two probes; ``localize`` and ``edit`` are flow mappings to fill in
RECIPE = """
version: 1
name: family-check
base: {{model: {model}}}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting of a cat in the style of {{concept}}", "{{concept}} starry night"]
    target: "a photo of a red car"
    preserve: ["a photo of a cat"]
localize: {{window: {window}, steps: {steps}, guidance: {guidance}, seeds: [0],
           prompts_per_edit: 2, scorer: ./unused, mode: {mode}, resolution: {resolution}}}
edit: {{lambda: 0.1, matrices: both, tokens: cover, seeds: [0], timesteps: [0.0, 1.0],
       allow_image_sites: true}}
"""


def recipe(model="./unused", window=1, steps=2, guidance=3.0, mode="full", resolution=16):
    """:data:`RECIPE` with these settings, parsed."""
    text = RECIPE.format(
        model=model, window=window, steps=steps, guidance=guidance, mode=mode,
        resolution=resolution,
    )  # fmt: skip
    return parse_recipe(text, "family-check.yaml")


def planted_text_window_is_found(family, model: Path, start: int, mode: str) -> None:
    """A single-site window planted at ``start`` in the text stream of ``family``'s twin
    (:func:`~locopack.localize.planted.planted_text_window`) is the window ``localize``
    chooses in ``mode`` (steps 2 in full mode, 5 in fast), scoring as much as every site."""
    pipe = family.build_twin(seed=0)
    pipe.set_progress_bar_config(disable=True)
    steps = 5 if mode == "fast" else 2
    planted = recipe(model, steps=steps, mode=mode)
    with planted_text_window(pipe, family, start, 1) as paths:
        originals = [p.original for p in prompt_pairs(planted)]
        scorer = ReferenceScorer(pipe, family, originals, steps, 3.0, resolutions=(16,))
        result = localize(
            LoadedBase(pipe, family),
            planted,
            scorer=scorer,
            progress=False,
            batch=9,
            full_references=True,
        )
    assert result.layers == [paths[start]] and result.mode == mode
    assert result.pooled_only is None
    assert result.baseline.mean == pytest.approx(0.0, abs=0.01)  # batched vs one: rounding
    chosen = result.candidates[result.chosen]
    assert chosen.mean == pytest.approx(result.all_sites.mean, abs=0.01) and chosen.mean < -0.02


def cli_run(*args: str) -> str:
    """``locopack --threads 1 ARGS``, which must succeed; its output."""
    result = CliRunner().invoke(cli, ["--threads", "1", *args])
    assert result.exit_code == 0, result.output
    return result.output


def listed_sites_fire_in_order(folder: Path, pipe, generate: Callable[[], object]) -> dict:
    """``locopack layers --json`` of ``folder``, checked against forward hooks on every
    listed key and value projection while ``generate`` runs ``pipe``; the listing."""
    listed = json.loads(cli_run("layers", str(folder), "--json"))
    fired: list[str] = []
    handles = [
        pipe.transformer.get_submodule(module).register_forward_hook(
            lambda _m, _i, _o, module=module: fired.append(module)
        )
        for site in listed["sites"]
        for module in (site["key"], site["value"])
    ]
    try:
        generate()
    finally:
        for handle in handles:
            handle.remove()
    assert fired == [m for site in listed["sites"] for m in (site["key"], site["value"])]
    return listed


@torch.no_grad()
def adapter_equals_merged(twin: Path, out: Path, family, sites, edit_recipe, denoise) -> None:
    """The edit of ``sites`` as an adapter, loaded by the family's own pipeline class
    (``load_lora_weights``) and by ``locopack.apply``, gives ``denoise``'s output of the
    merged checkpoint within 1e-5, which differs from the base's."""
    pipe, _ = load_pipeline(str(twin))
    pipe.set_progress_bar_config(disable=True)
    delta = compute_delta(LoadedBase(pipe, family), edit_recipe, sites)
    write_adapter(delta, out, max_rank=64, energy=0.99999999)
    write_merged(LoadedBase(pipe, family), delta, out / "merged")
    with_adapter = DiffusionPipeline.from_pretrained(str(twin))
    assert type(with_adapter).__name__ == family.pipeline_classes[0]
    with_adapter.load_lora_weights(str(out))  # plain diffusers, as a user would
    applied, _ = load_pipeline(str(twin))
    assert locopack.apply(applied, out).kind == "adapter"
    merged = DiffusionPipeline.from_pretrained(str(out / "merged"))
    a, p, m, b = (denoise(x.transformer) for x in (with_adapter, applied, merged, pipe))
    assert (a - m).abs().max() <= 1e-5
    assert (p - m).abs().max() <= 1e-5
    assert (m - b).abs().max() > 1e-3  # the edit does change the outputs


def layout_folder(folder: Path, pipeline_class: str, config: dict) -> Path:
    """A published transformer config written as a pipeline folder without weights
    (``model_index.json`` and ``transformer/config.json`` alone)."""
    (folder / "transformer").mkdir(parents=True)
    index = {"_class_name": pipeline_class, "transformer": ["diffusers", config["_class_name"]]}
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "transformer" / "config.json").write_text(json.dumps(config))
    return folder


def real_layout(folder: Path, pipeline_class: str, config: dict):
    """The family and meta-device denoiser of a published config (:func:`layout_folder`)."""
    return load_denoiser_layout(str(layout_folder(folder, pipeline_class, config)))


def twin_recipe_builds_and_audits(folder: Path, name: str, recipe_file: str) -> Path:
    """``locopack twin NAME``, ``build`` of ``recipes/twin/RECIPE_FILE`` and ``audit
    --reproduce full`` in ``folder``; checks the audit reproduced both stages and that ONNX
    is refused in one line.  Returns the release."""
    recipe_path = folder / recipe_file
    recipe_path.write_text((ROOT / "recipes" / "twin" / recipe_file).read_text())
    cli_run("twin", name, str(folder / "out" / f"tiny-{name}"))
    cli_run("build", str(recipe_path), "--out", str(folder / "release"))
    audit = cli_run("audit", str(folder / "release"), "--reproduce", "full")
    assert "LocoGen (full mode) chose the same window" in audit
    assert "gives the same delta" in audit
    delta, model = folder / "release" / "delta.safetensors", folder / "out" / f"tiny-{name}"
    onnx = CliRunner().invoke(
        cli, ["export", str(delta), "--onnx", "--model", str(model), "--out", str(folder / "x")]
    )
    assert onnx.exit_code == 1
    # refused by the tracer, or before anything is written where the family says why
    refusals = ("error: ONNX export is not supported", "error: onnx format: no ONNX export")
    assert onnx.output.strip().splitlines()[-1].startswith(refusals)
    return folder / "release"
