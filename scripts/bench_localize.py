"""Benchmark LocoGen: the paper-style loop against locopack's sweep, side by side in one run.

(a) paper-style: one pipeline call per candidate window per probe and seed (batch 1, CFG), the
    text encoded by the pipeline on every call, every window at full settings;
(b) locopack: text states computed once, candidates batched into one denoiser call, and (by
    default) fast mode: a race, every window screened at a fraction of the steps on every
    probe, the windows not clearly worse re-scored at more steps, at most two at full settings
    (locopack.localize.race).

Prints denoiser passes (counted by a hook: one image through one step, CFG counts two) and wall
times of both and their ratios, the share of time inside the denoiser, whether the chosen
windows agree and Spearman correlations.  In fast mode it also runs locopack's full mode: its
choice, the Spearman of each race round's ranking against it, and its seed-to-seed Spearman
(the noise floor of any ranking).  Last, the wall time of ``locopack --help``.

Models: a tiny SD-1.x twin with a tiny random CLIP (default; mechanics only: random weights
rank windows almost at random); ``--twin sd1`` (16 sites, the SD-1.5 layout) or ``--twin
sdxl70`` (SD-XL's 70 sites: transformer depths 1, 2, 10, tiny widths) with a planted window (its
sites read the text at full strength, the others at ``--leak``) and a scorer that knows the
unswapped images, so the right window is known; ``--recipe`` takes a recipe's model, scorer,
probes and settings (flags override them), e.g. the trained toy world.  ``--paper-windows K``
times the paper loop on K evenly spaced windows and scales it to all (it is linear in windows).

    python scripts/bench_localize.py --twin sd1 --window 2 --steps 10
    python scripts/bench_localize.py --twin sdxl70 --window 10 --steps 10 --paper-windows 8
    python scripts/bench_localize.py --recipe recipes/toy/erase-triangle.yaml
    python scripts/bench_localize.py --procs 2     # 1 vs N processes under accelerate launch
    python scripts/bench_localize.py --sweep --seeds 0 1 2 3 --steps 10

``--sweep``: fast against full mode on the planted twins of :data:`PLANTINGS` (both layouts,
windows planted at several depths): per planting, both choices, whether they agree and both
modes' denoiser passes; last, the 70-site twin's fast passes against the paper loop's (timed
on one window, scaled to all).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from localize_baseline import (
    PAIRS,
    DenoiserClock,
    help_seconds,
    paper_loop,
    sdxl70,
    spearman,
)

from locopack.distributed import launch_command
from locopack.localize import (
    CandidateCache,
    ClipScorer,
    PromptPair,
    Rung,
    Sweep,
    SweepMode,
    run_sweep,
)
from locopack.localize.planted import ReferenceScorer, plant_window
from locopack.localize.windows import candidate_windows, prompt_pairs
from locopack.models import get_family, load_pipeline
from locopack.models.twin_parts import tiny_clip_model


def per_seed(candidate, seeds: int, signs) -> np.ndarray:
    """A full-settings candidate's objective for each seed (its scores are probe-major)."""
    values = np.array(candidate.scores).reshape(len(signs), seeds) * np.array(signs)[:, None]
    return values.mean(axis=0)


def from_recipe(args) -> list[PromptPair]:
    """Fill the unset flags from ``args.recipe``; returns its probes."""
    from locopack.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    settings = recipe.localize
    args.model = args.model or recipe.local_path(recipe.base.model)
    args.scorer = args.scorer or recipe.local_path(settings.scorer)
    for name in ("steps", "guidance", "seeds", "window"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(settings, name))
    return prompt_pairs(recipe)


RECIPE = """
version: 1
name: bench-procs
base: {{model: {model}}}
edits:
  - kind: erase
    attribute: style
    concept: van gogh
    prompts: ["a painting of a cat in the style of {{concept}}", "{{concept}} starry night"]
    target: "a painting of a cat"
localize: {{window: {window}, steps: {steps}, guidance: {guidance}, seeds: {seeds},
           prompts_per_edit: 2, scorer: {scorer}, mode: full}}
"""


def processes(args, model: str, scorer: str, tmp: Path) -> None:
    """Time the full sweep with 1 and with ``args.procs`` processes (accelerate, CPU)."""
    recipe = tmp / "recipe.yaml"
    recipe.write_text(
        RECIPE.format(
            model=model,
            scorer=scorer,
            window=args.window,
            steps=args.steps,
            guidance=args.guidance,
            seeds=list(args.seeds),
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for procs in (1, args.procs):
        out = tmp / f"procs{procs}"
        launch = launch_command(procs) if procs > 1 else [sys.executable]
        command = [
            *launch,
            "-m",
            "locopack.cli",
            "--threads",
            str(args.threads),
            "localize",
            str(recipe),
            "--out",
            str(out),
            "--batch",
            str(args.batch),
        ]
        t0 = time.perf_counter()
        run = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        data = json.loads((out / "localization.json").read_text())
        sweep = float(re.search(r"^sweep ([\d.]+) s;", run.stdout, re.MULTILINE).group(1))
        rows.append((procs, wall, sweep, data))
    (p1, wall1, sweep1, d1), (pn, walln, sweepn, dn) = rows
    same = [c["scores"] for c in d1["candidates"]] == [c["scores"] for c in dn["candidates"]]
    print(f"{'processes':>10}{'wall s':>9}{'sweep s':>9}")
    for procs, wall, sweep, _ in rows:
        print(f"{procs:>10}{wall:9.1f}{sweep:9.1f}")
    print(
        f"speed-up 1 -> {pn}: {wall1 / walln:.2f}x wall (incl. start-up), "
        f"{sweep1 / sweepn:.2f}x sweep; identical scores and choice: "
        f"{same and d1['chosen'] == dn['chosen']}"
    )


#: (twin, window size, first site of the planted window): SD-1.5's 16 sites and SD-XL's 70,
#: each at a down, middle and up depth
PLANTINGS = [
    ("sd1", 2, 0),
    ("sd1", 2, 7),
    ("sd1", 2, 14),
    ("sdxl70", 10, 14),
    ("sdxl70", 10, 30),
    ("sdxl70", 10, 45),
]


def plantings(args) -> None:
    """Fast vs full mode on every planting of :data:`PLANTINGS`; prints one row each."""
    print(
        f"{len(args.pairs)} probes x {len(args.seeds)} seeds, {args.steps} steps, "
        f"CFG {args.guidance}, {args.threads} thread(s), leak {args.leak}"
    )
    print(
        f"{'twin':>7}{'m':>4}{'planted':>8}{'full':>6}{'fast':>6}  agree"
        f"{'full passes':>13}{'fast passes':>13}{'ratio':>8}"
    )
    agreed, paper_ratio = 0, None
    for twin, window, planted in PLANTINGS:
        args.twin, args.window, args.planted = twin, window, planted
        with tempfile.TemporaryDirectory() as tmp:
            pipe, family, scorer, _ = load(args, Path(tmp))
        clock = DenoiserClock(getattr(pipe, family.denoiser_attr))
        rung = Rung(args.steps, args.guidance, tuple(args.seeds), None)
        runs = {}
        for mode in ("full", "fast"):
            engine = Sweep(pipe, family, args.pairs, scorer, batch=args.batch, progress=False)
            runs[mode] = timed(clock, partial(run_sweep, engine, window, rung, mode))
        (full, *_, full_passes), (fast, *_, fast_passes) = runs["full"], runs["fast"]
        agreed += full.chosen == fast.chosen
        print(
            f"{twin:>7}{window:>4}{planted:>8}{full.chosen:>6}{fast.chosen:>6}  "
            f"{'yes' if full.chosen == fast.chosen else 'NO ':5}"
            f"{full_passes:13,}{fast_passes:13,}{full_passes / fast_passes:7.1f}x"
        )
        if twin == "sdxl70" and planted == 30:
            sites = [s.path for s in family.sites(getattr(pipe, family.denoiser_attr))]
            windows = candidate_windows(sites, window)
            clock.reset()
            paper_loop(pipe, family, args.pairs, scorer, windows[planted : planted + 1], rung)
            paper_ratio = (clock.passes * len(windows), fast_passes)
    print(f"fast equals full on {agreed} of {len(PLANTINGS)} plantings")
    if paper_ratio:
        paper, fast = paper_ratio
        print(
            f"70-site twin, planted 30: paper loop {paper:,.0f} passes (1 window timed, x61), "
            f"fast {fast:,}: {paper / fast:.1f}x fewer"
        )


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", help="take model, scorer, probes and settings from it")
    parser.add_argument("--model", help="pipeline folder (default: a tiny SD-1.x twin)")
    parser.add_argument("--scorer", help="CLIPModel folder (default: a tiny random CLIP)")
    parser.add_argument("--twin", choices=["sd1", "sdxl70"], help="a twin with a planted window")
    parser.add_argument("--planted", type=int, help="first site of the planted window (middle)")
    parser.add_argument("--leak", type=float, default=0.0, help="text strength outside it")
    parser.add_argument("--steps", type=int, help="default 8, or the recipe's")
    parser.add_argument("--guidance", type=float, help="default 4.0, or the recipe's")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1, or the recipe's")
    parser.add_argument("--window", type=int, help="default 1, or the recipe's")
    parser.add_argument("--probes", type=int, default=4, help="twin probes (1-10, default 4)")
    parser.add_argument("--mode", choices=[m.value for m in SweepMode], default="fast")
    parser.add_argument("--screen-resolution", type=int, help="race screening resolution")
    parser.add_argument("--paper-windows", type=int, help="time the paper loop on this many")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--procs",
        type=int,
        default=0,
        help="instead: time the full sweep with 1 and N accelerate processes",
    )
    parser.add_argument(
        "--sweep", action="store_true", help="instead: fast vs full on the planted twins"
    )
    return parser.parse_args()


def load(args, tmp: Path):
    """(pipeline, family, scorer, planted window or None) for the arguments."""
    model, scorer_dir = args.model, args.scorer
    if args.twin == "sdxl70":
        model = sdxl70(tmp / "twin")
    elif model is None:
        model = str(get_family("sd1").save_twin(tmp / "twin"))
    pipe, family = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    if args.twin:
        count = len(family.sites(getattr(pipe, family.denoiser_attr)))
        start = (count - args.window) // 2 if args.planted is None else args.planted
        plant_window(pipe, family, start, args.window, args.leak)
        texts = [p.reference for p in args.pairs]
        scorer = ReferenceScorer(
            pipe,
            family,
            texts,
            args.steps,
            args.guidance,
            tuple(args.seeds),
            tuple(dict.fromkeys([None, args.screen_resolution])),
        )
        return pipe, family, scorer, start
    if scorer_dir is None:
        clip, tokenizer = tiny_clip_model(0)
        scorer_dir = str(tmp / "clip")
        clip.save_pretrained(scorer_dir)
        tokenizer.save_pretrained(scorer_dir)
    return pipe, family, ClipScorer(scorer_dir), None


def timed(clock, run):
    clock.reset()
    t0 = time.perf_counter()
    value = run()
    return value, time.perf_counter() - t0, clock.seconds, clock.passes


def main() -> None:
    args = arguments()
    torch.set_num_threads(args.threads)
    args.pairs = from_recipe(args) if args.recipe else PAIRS[: args.probes]
    defaults = {"steps": 8, "guidance": 4.0, "seeds": [0, 1], "window": 1}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    pairs = args.pairs
    if args.sweep:
        plantings(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        if args.procs:
            model = args.model or str(get_family("sd1").save_twin(Path(tmp) / "twin"))
            clip, tokenizer = tiny_clip_model(0)
            clip.save_pretrained(Path(tmp) / "clip")
            tokenizer.save_pretrained(Path(tmp) / "clip")
            processes(args, model, args.scorer or str(Path(tmp) / "clip"), Path(tmp))
            return
        pipe, family, scorer, planted = load(args, Path(tmp))
    clock = DenoiserClock(getattr(pipe, family.denoiser_attr))
    rung = Rung(args.steps, args.guidance, tuple(args.seeds), None)
    sites = [s.path for s in family.sites(getattr(pipe, family.denoiser_attr))]
    windows = candidate_windows(sites, args.window)
    chosen_for_paper = list(range(len(windows)))
    if args.paper_windows and args.paper_windows < len(windows):
        step = len(windows) / args.paper_windows
        chosen_for_paper = {int(i * step) for i in range(args.paper_windows)}
        chosen_for_paper = sorted(chosen_for_paper | ({planted} - {None}))
    scale = len(windows) / len(chosen_for_paper)

    paper, paper_s, paper_den, paper_passes = timed(
        clock,
        lambda: paper_loop(
            pipe, family, pairs, scorer, [windows[i] for i in chosen_for_paper], rung
        ),
    )
    paper_s, paper_den, paper_passes = paper_s * scale, paper_den * scale, paper_passes * scale

    def sweep(mode):
        engine = Sweep(
            pipe,
            family,
            pairs,
            scorer,
            cache=CandidateCache(None),
            batch=args.batch,
            progress=False,
        )
        return run_sweep(engine, args.window, rung, mode, screen_resolution=args.screen_resolution)

    ours, ours_s, ours_den, ours_passes = timed(clock, lambda: sweep(args.mode))
    full = None
    if args.mode != "full":
        full, full_s, full_den, full_passes = timed(clock, lambda: sweep("full"))
    refs = ours.timings.get("references", 0.0)

    print(
        f"model {args.twin or args.model or 'tiny sd1 twin'} ({family.pretty_name}), "
        f"{len(windows)} windows of {args.window}, "
        f"{len(pairs)} probes x {len(args.seeds)} seeds, {args.steps} steps, "
        f"CFG {args.guidance}, {args.threads} thread(s)"
        + ("" if planted is None else f"; planted window {planted} (leak {args.leak})")
    )
    if scale > 1:
        print(
            f"(a) timed on {len(chosen_for_paper)} of {len(windows)} windows, scaled x{scale:.2f}"
        )
    print(f"{'':28}{'passes':>10}{'wall s':>9}{'in denoiser':>13}")
    rows = [("(a) paper-style loop", paper_passes, paper_s, paper_den)]
    rows.append((f"(b) locopack {args.mode}", ours_passes, ours_s, ours_den))
    if full is not None:
        rows.append(("    locopack full", full_passes, full_s, full_den))
    for name, count, wall, den in rows:
        print(f"{name:28}{count:10,.0f}{wall:9.2f}{den / wall:12.0%}")
    print(f"{'    of which references':28}{'':10}{refs:9.2f}   (baseline + all-sites lines)")
    print(
        f"speed-up (a)/(b): {paper_passes / ours_passes:.1f}x fewer denoiser passes, "
        f"{paper_s / ours_s:.2f}x wall; without the reference lines "
        f"{paper_s / max(ours_s - refs, 1e-9):.2f}x"
    )
    reference = full if full is not None else ours
    full_objectives = [c.objective for c in reference.candidates]
    chosen_paper = chosen_for_paper[int(np.argmin(paper.mean(axis=1)))]
    agree = chosen_paper == ours.chosen == reference.chosen
    print(
        f"chosen window: paper {chosen_paper}, locopack {ours.chosen}, locopack full "
        f"{reference.chosen}"
        + ("" if planted is None else f", planted {planted}")
        + f" -> {'agree' if agree and planted in (None, ours.chosen) else 'DIFFER'}"
    )
    sub = [full_objectives[i] for i in chosen_for_paper]
    print(
        f"Spearman correlation of the rankings (paper vs locopack full): "
        f"{spearman(paper.mean(axis=1), sub):.3f}"
    )
    signs = [p.sign for p in pairs]
    if len(args.seeds) > 1:
        seeds = np.array([per_seed(c, len(args.seeds), signs) for c in reference.candidates])
        print(f"noise floor: seed-to-seed Spearman of the full sweep {spearman(*seeds.T[:2]):.3f}")
    for r, one in enumerate(ours.rounds or []):
        ranked = [c.objective for c in one.candidates]
        rho = spearman(ranked, [full_objectives[i] for i in one.windows])
        print(
            f"race round {r + 1}: {len(one.windows)} windows at {one.rung['steps']} steps, "
            f"{len(one.probes)} probes x {len(one.rung['seeds'])} seeds; Spearman vs full "
            + (f"{rho:.3f}" if len(ranked) > 2 else "n/a (2 or fewer)")
        )
    if not ours.rounds:
        print(
            f"the screening pass alone would choose: none ran ({len(windows)} windows, "
            f"{args.mode} mode: every window at full settings)"
        )
    print(f"locopack --help: {help_seconds():.2f} s wall (a fresh process)")


if __name__ == "__main__":
    main()
