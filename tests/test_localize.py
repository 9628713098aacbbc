"""LocoGen: planted windows are found exactly; results are saved; a killed sweep resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from locopack.errors import ModelLayoutError, RecipeError
from locopack.localize import (
    CandidateCache,
    ClipScorer,
    Rung,
    Sweep,
    SweepMode,
    localize,
    prompt_pairs,
    run_sweep,
)
from locopack.localize.planted import ReferenceScorer as PlantedScorer
from locopack.localize.planted import plant_window
from locopack.localize.result import LocalizationResult
from locopack.models import LoadedBase, load_pipeline
from locopack.recipe import load_recipe, parse_recipe

RECIPE = """
version: 1
name: planted
base: {{model: {model}}}
edits:
  - kind: {kind}
    {what}
    prompts: ["a painting of a cat in the style of {{concept}}", "{{concept}} starry night"]
    {target}
localize: {{window: {window}, steps: {steps}, guidance: 3.0, seeds: [0], prompts_per_edit: 2,
           scorer: ./unused, mode: {mode}}}
"""


def _recipe(model, window=1, mode="full", kind="erase", steps=2):
    if kind == "erase":
        what, target = "attribute: style\n    concept: van gogh", 'target: "a photo of a red car"'
    else:
        what, target = "fact: van gogh", 'targets: ["a photo of a red car"]'
    text = RECIPE.format(
        model=model, window=window, mode=mode, kind=kind, what=what, target=target, steps=steps
    )
    return parse_recipe(text, "planted.yaml")


def ReferenceScorer(pipe, family, texts, steps=2):  # noqa: N802 (reads as the class it builds)
    """The planted-window scorer at the test recipe's settings (CFG 3, seed 0)."""
    return PlantedScorer(pipe, family, texts, steps=steps, guidance=3.0)


def _planted_pipe(twin_dir, start, size):
    """The twin with key/value zeroed at every site outside ``start .. start+size-1``."""
    pipe, family = load_pipeline(str(twin_dir))
    return pipe, family, plant_window(pipe, family, start, size)


@pytest.mark.parametrize(
    "name, start, size, mode",
    [
        ("sd1", 3, 1, "full"),
        ("sd1", 12, 1, "fast"),
        ("sd1", 6, 2, "full"),
        ("sd1", 6, 2, "fast"),
        ("sdxl", 0, 1, "fast"),
        ("sdxl", 9, 2, "full"),
        ("sdxl", 9, 2, "fast"),
        ("sdxl", 15, 1, "full"),
        ("sdxl", 15, 1, "fast"),
    ],
)
def test_planted_window_is_found(name, start, size, mode, twin_dirs):
    pipe, family, paths = _planted_pipe(twin_dirs[name], start, size)
    steps = 5 if mode == "fast" else 2  # too few steps to screen at fewer
    recipe = _recipe(twin_dirs[name], window=size, mode=mode, steps=steps)
    scorer = ReferenceScorer(pipe, family, [p.original for p in prompt_pairs(recipe)], steps)
    result = localize(
        LoadedBase(pipe, family),
        recipe,
        scorer=scorer,
        progress=False,
        batch=8,
        full_references=True,
    )
    assert result.mode == mode and (result.rounds is not None) == (mode == "fast")
    assert result.chosen == start
    assert result.layers == paths[start : start + size]
    # the baseline is the reference itself; the chosen window carries the whole effect
    assert result.baseline.mean == pytest.approx(0.0, abs=0.02)
    chosen = result.candidates[result.chosen]
    assert chosen.mean == pytest.approx(result.all_sites.mean, abs=1e-3)


def test_update_edits_choose_the_highest_score_to_the_target(twin_dirs):
    pipe, family, paths = _planted_pipe(twin_dirs["sd1"], 5, 1)
    recipe = _recipe(twin_dirs["sd1"], kind="update")
    pairs = prompt_pairs(recipe)
    assert all(p.sign == -1 and p.reference == p.altered for p in pairs)
    scorer = ReferenceScorer(pipe, family, [p.reference for p in pairs])
    result = localize(LoadedBase(pipe, family), recipe, scorer=scorer, progress=False)
    assert result.layers == [paths[5]]
    assert result.candidates[5].mean > max(
        c.mean for i, c in enumerate(result.candidates) if i != 5
    )


def test_fast_mode_races_and_rescores_at_most_two_at_full_settings(twin_dirs):
    pipe, family, _ = _planted_pipe(twin_dirs["sd1"], 8, 1)
    recipe = _recipe(twin_dirs["sd1"], mode="fast", steps=5)
    scorer = ReferenceScorer(pipe, family, [p.original for p in prompt_pairs(recipe)], 5)
    fast = localize(LoadedBase(pipe, family), recipe, scorer=scorer, progress=False)
    full = localize(
        LoadedBase(pipe, family), recipe, scorer=scorer, progress=False, mode=SweepMode.FULL
    )
    assert fast.chosen == full.chosen == 8
    assert fast.mode == "fast" and full.mode == "full" and full.rounds is None
    first, last = fast.rounds[0], fast.rounds[-1]
    assert first.windows == list(range(16)) and first.rung["steps"] < fast.rung["steps"]
    assert last.rung == fast.rung and last.windows == fast.finalists
    assert 8 in fast.finalists and len(fast.finalists) <= 2
    assert len(fast.screening) == 16 and full.screening is None
    for i in fast.finalists:  # finalists are scored at full settings, like the full sweep
        assert fast.candidates[i].scores == pytest.approx(full.candidates[i].scores, abs=1e-3)
    # cheap reference lines by default: the first round's steps, the first seed
    assert fast.reference_rung["steps"] == first.rung["steps"]


def test_a_raced_result_survives_save_and_load(tmp_path, twin_dirs):
    pipe, family, _ = _planted_pipe(twin_dirs["sd1"], 4, 1)
    recipe = _recipe(twin_dirs["sd1"], mode="fast", steps=5)
    scorer = ReferenceScorer(pipe, family, [p.original for p in prompt_pairs(recipe)], 5)
    result = localize(LoadedBase(pipe, family), recipe, tmp_path, scorer=scorer, progress=False)
    loaded = LocalizationResult.load(tmp_path / "localization.json")
    assert loaded.chosen == result.chosen == 4 and len(loaded.rounds) == len(result.rounds) > 1
    assert loaded.to_dict()["rounds"] == json.loads(json.dumps(result.to_dict()["rounds"]))
    again = localize(LoadedBase(pipe, family), recipe, tmp_path, scorer=scorer, progress=False)
    assert all(c.cached for r in again.rounds for c in r.candidates)


def test_result_files_and_cache(tmp_path, twin_dirs):
    pipe, family, paths = _planted_pipe(twin_dirs["sd1"], 2, 1)
    recipe = _recipe(twin_dirs["sd1"])
    scorer = ReferenceScorer(pipe, family, [p.original for p in prompt_pairs(recipe)])
    result = localize(LoadedBase(pipe, family), recipe, tmp_path, scorer=scorer, progress=False)
    data = json.loads((tmp_path / "localization.json").read_text())
    assert data["chosen_layers"] == [paths[2]]
    assert data["meta"]["recipe_sha256"] == recipe.sha256
    assert data["meta"]["base_fingerprint"].startswith("sha256:")
    assert len(data["candidates"]) == len(paths)
    first = data["candidates"][0]
    assert {"mean", "std", "scores", "window"} <= set(first) and len(first["scores"]) == 2
    assert result.timings["total"] > 0 and first["mean"] == result.candidates[0].mean
    assert not {"timings", "seconds", "cached"} & (set(data) | set(first))  # run facts: unsaved
    assert (tmp_path / "localization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert LocalizationResult.load(tmp_path / "localization.json").layers == result.layers
    cached = localize(LoadedBase(pipe, family), recipe, tmp_path, scorer=scorer, progress=False)
    assert all(c.cached for c in cached.candidates)
    assert [c.scores for c in cached.candidates] == [c.scores for c in result.candidates]

    # the layers of a localization file; made on another base: used, with a warning
    from locopack.pipeline.stages import choose_layers

    saved, made_on = tmp_path / "localization.json", data["meta"]["base_fingerprint"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_layers(recipe, paths, None, saved, made_on) == [paths[2]]
    with pytest.warns(UserWarning, match="made on another base model"):
        assert choose_layers(recipe, paths, None, saved, "sha256:another") == [paths[2]]

    # a malformed cache entry is redone, not trusted
    entries = sorted((tmp_path / "cache").glob("*.json"))
    bad = ['{"scores": [], "seconds": 1}', '{"scores": ["x"], "seconds": 1}', "[1, 2]", "{"]
    for entry, text in zip(entries, bad, strict=False):
        entry.write_text(text)
    again = localize(LoadedBase(pipe, family), recipe, tmp_path, scorer=scorer, progress=False)
    assert sum(not c.cached for c in again.candidates + [again.baseline, again.all_sites]) == 4
    assert [c.scores for c in again.candidates] == [c.scores for c in result.candidates]

    # a hand-edited chosen window must name one of the windows
    data = json.loads((tmp_path / "localization.json").read_text())
    for chosen in (len(paths), -1, "2", True):
        (tmp_path / "edited.json").write_text(json.dumps({**data, "chosen": chosen}))
        with pytest.raises(RecipeError, match="'chosen' must be a window index"):
            LocalizationResult.load(tmp_path / "edited.json")


def test_batched_candidates_match_one_at_a_time(twin_dirs):
    pipe, family = load_pipeline(str(twin_dirs["pixart"]))
    recipe = _recipe(twin_dirs["pixart"])
    pairs = prompt_pairs(recipe)
    scorer = ReferenceScorer(pipe, family, [p.original for p in pairs])
    rung = Rung(2, 3.0, (0,), None)
    results = []
    for batch in (1, 16):
        sweep = Sweep(
            pipe, family, pairs, scorer, cache=CandidateCache(None), batch=batch, progress=False
        )
        results.append(run_sweep(sweep, 1, rung, "full"))
    one, many = results
    assert one.chosen == many.chosen
    for a, b in zip(one.candidates, many.candidates, strict=True):
        assert a.scores == pytest.approx(b.scores, abs=0.05)


def test_running_out_of_device_memory_halves_the_batch(twin_dirs, monkeypatch):
    pipe, family = load_pipeline(str(twin_dirs["sd1"]))
    recipe = _recipe(twin_dirs["sd1"])
    pairs = prompt_pairs(recipe)
    scorer = ReferenceScorer(pipe, family, [p.original for p in pairs])
    rung = Rung(2, 3.0, (0,), None)
    windows = [[s.path] for s in family.sites(pipe.unet)][:8]  # 8 -> 4 -> 2 per call

    def sweep(batch):
        return Sweep(pipe, family, pairs, scorer, batch=batch, progress=False)

    expected = sweep(2).score(windows, rung)
    images = Sweep._images

    def two_fit(self, k, chosen, seed, rung):
        if len(chosen) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return images(self, k, chosen, seed, rung)

    monkeypatch.setattr(Sweep, "_images", two_fit)
    small = sweep(8)
    assert [c.scores for c in small.score(windows, rung)] == [c.scores for c in expected]
    assert small.batch == 2
    monkeypatch.setattr(Sweep, "_images", lambda *_: (_ for _ in ()).throw(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):  # other errors are not retried
        sweep(8).score(windows, rung)


def _localize_cmd(recipe, out, mode="full"):
    code = "import torch; torch.set_num_threads(1); from locopack.cli import main; main()"
    return [
        sys.executable,
        "-c",
        code,
        "localize",
        str(recipe),
        "--out",
        str(out),
        f"--{mode}",
        "--batch",
        "1",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "fast"])
def test_kill_9_then_resume_gives_identical_results(mode, tmp_path, twin_dirs):
    from locopack.models.twin_parts import tiny_clip_model

    model, tokenizer = tiny_clip_model(0)
    model.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        _recipe(twin_dirs["sd1"])
        .source_text.replace("./unused", str(tmp_path / "clip"))
        .replace("steps: 2,", "steps: 5,")
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _localize_cmd(recipe, killed, mode),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(list((killed / "cache").glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = len(list((killed / "cache").glob("*.json")))
    assert 3 <= finished_before < 16, "the kill must land mid-sweep"
    assert not (killed / "localization.json").exists()

    run = subprocess.run(
        _localize_cmd(recipe, killed, mode), env=env, check=True, capture_output=True, text=True
    )
    reused = re.search(r"^sweep [\d.]+ s; (\d+) of \d+ scores taken from", run.stdout, re.M)
    assert int(reused.group(1)) >= finished_before
    resumed = json.loads((killed / "localization.json").read_text())
    loaded = load_recipe(recipe)
    pipe, family = load_pipeline(str(twin_dirs["sd1"]))
    clean = localize(
        LoadedBase(pipe, family),
        loaded,
        tmp_path / "clean",
        progress=False,
        batch=1,
        mode=mode,
        scorer=ClipScorer(str(tmp_path / "clip")),
    ).to_dict()
    clean = json.loads(json.dumps(clean))
    assert (resumed["rounds"] is not None) == (mode == "fast")
    assert resumed == clean  # no durations nor cache flags: the same file as a clean run


def test_a_damaged_scorer_folder_is_a_clear_error(tmp_path):
    from locopack.models.twin_parts import tiny_clip_model

    clip, tokenizer = tiny_clip_model(0)
    folder = tmp_path / "clip"
    clip.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    config = folder / "preprocessor_config.json"
    config.write_text(json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25] * 3}))
    assert ClipScorer(str(folder)).mean == (0.5, 0.5, 0.5)
    config.write_text('{"image_mean": [0.5, ')
    with pytest.raises(ModelLayoutError, match="preprocessor_config.json: not a readable"):
        ClipScorer(str(folder))
    config.unlink()
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLayoutError, match="cannot load the CLIP scorer"):
        ClipScorer(str(folder))
