"""Benchmark LocoGen: the paper-style loop against locopack's sweep, side by side in one run.

(a) paper-style: one pipeline call per candidate window per probe and seed (batch 1, CFG), the
    text encoded by the pipeline on every call, every window at full settings;
(b) locopack: text states computed once, candidates batched into one denoiser call, and (by
    default) fast mode: every window screened at a fraction of the steps with one seed, the
    best few re-scored at full settings.

Prints both wall times and their ratio, the share of time spent inside the denoiser, whether
the chosen windows agree and the Spearman correlation of the two rankings.  Without --recipe
or --model it runs on a tiny SD-1.x twin with a tiny CLIP scorer (seconds; mechanics only:
random weights rank windows almost at random).  With --recipe it uses the recipe's model,
scorer, probes and localization settings (flags override them), e.g. the trained toy world:

    python scripts/bench_localize.py --recipe recipes/toy/erase-triangle.yaml --window 1
    python scripts/bench_localize.py [--model DIR --scorer DIR] [--steps 8] [--mode fast]
    python scripts/bench_localize.py --procs 2     # 1 vs N processes under accelerate launch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from locopack.distributed import launch_command
from locopack.intervene import swap_text_states, window_replacements
from locopack.localize import CandidateCache, ClipScorer, PromptPair, Rung, Sweep, run_sweep
from locopack.localize.windows import candidate_windows, prompt_pairs
from locopack.models import get_family, load_pipeline
from locopack.models.twin_parts import tiny_clip_model

PAIRS = [
    PromptPair(
        "a painting of a cat in the style of van gogh",
        "a painting of a cat",
        "a painting of a cat in the style of van gogh",
        +1,
    ),
    PromptPair("van gogh starry night", "a starry night", "van gogh starry night", +1),
]


class DenoiserClock:
    """Accumulates wall time spent inside the denoiser's forward."""

    def __init__(self, denoiser):
        self.seconds, self._start = 0.0, 0.0
        denoiser.register_forward_pre_hook(self._enter)
        denoiser.register_forward_hook(self._leave)

    def _enter(self, *_):
        self._start = time.perf_counter()

    def _leave(self, *_):
        self.seconds += time.perf_counter() - self._start


def paper_loop(pipe, family, pairs, scorer, windows, rung):
    """One pipeline call per window, probe and seed; returns each window's objective."""
    denoiser = getattr(pipe, family.denoiser_attr)
    sites = [s.path for s in family.sites(denoiser)]
    objectives = []
    for window in windows:
        values = []
        for pair in pairs:
            with torch.no_grad():
                original = family.encode(pipe, [pair.original])[0]
                altered = family.encode(pipe, [pair.altered])[0]
            for seed in rung.seeds:
                replacements = window_replacements(sites, [window], original, altered)
                generator = torch.Generator().manual_seed(seed)
                with swap_text_states(denoiser, replacements):
                    image = pipe(
                        pair.original,
                        num_inference_steps=rung.steps,
                        guidance_scale=rung.guidance,
                        generator=generator,
                        output_type="pil",
                        **family.call_kwargs(),
                    ).images[0]
                values.append(pair.sign * scorer([image], [pair.reference])[0])
        objectives.append(float(np.mean(values)))
    return objectives


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


def spearman(a, b) -> float:
    """Spearman rank correlation (no ties expected)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


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
        subprocess.run(command, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - t0
        data = json.loads((out / "localization.json").read_text())
        rows.append((procs, wall, data["timings"]["total"], data))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", help="take model, scorer, probes and settings from it")
    parser.add_argument("--model", help="pipeline folder (default: a tiny SD-1.x twin)")
    parser.add_argument("--scorer", help="CLIPModel folder (default: a tiny random CLIP)")
    parser.add_argument("--steps", type=int, help="default 8, or the recipe's")
    parser.add_argument("--guidance", type=float, help="default 4.0, or the recipe's")
    parser.add_argument("--seeds", type=int, nargs="+", help="default 0 1, or the recipe's")
    parser.add_argument("--window", type=int, help="default 1, or the recipe's")
    parser.add_argument("--mode", choices=["fast", "full"], default="fast")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--procs",
        type=int,
        default=0,
        help="instead: time the full sweep with 1 and N accelerate processes",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pairs = from_recipe(args) if args.recipe else PAIRS
    defaults = {"steps": 8, "guidance": 4.0, "seeds": [0, 1], "window": 1}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    with tempfile.TemporaryDirectory() as tmp:
        model, scorer_dir = args.model, args.scorer
        if model is None:
            model = str(get_family("sd1").save_twin(Path(tmp) / "twin"))
        if scorer_dir is None:
            clip, tokenizer = tiny_clip_model(0)
            scorer_dir = str(Path(tmp) / "clip")
            clip.save_pretrained(scorer_dir)
            tokenizer.save_pretrained(scorer_dir)
        if args.procs:
            processes(args, model, scorer_dir, Path(tmp))
            return
        pipe, family = load_pipeline(model)
        scorer = ClipScorer(scorer_dir)
    clock = DenoiserClock(getattr(pipe, family.denoiser_attr))
    rung = Rung(args.steps, args.guidance, tuple(args.seeds), None)
    sites = [s.path for s in family.sites(getattr(pipe, family.denoiser_attr))]
    windows = candidate_windows(sites, args.window)

    clock.seconds, t0 = 0.0, time.perf_counter()
    paper = paper_loop(pipe, family, pairs, scorer, windows, rung)
    paper_s, paper_denoiser = time.perf_counter() - t0, clock.seconds

    sweep = Sweep(
        pipe, family, pairs, scorer, cache=CandidateCache(None), batch=args.batch, progress=False
    )
    clock.seconds, t0 = 0.0, time.perf_counter()
    ours = run_sweep(sweep, args.window, rung, args.mode)
    ours_s, ours_denoiser = time.perf_counter() - t0, clock.seconds
    refs = ours.timings.get("references", 0.0)

    # fast mode: the screening pass ranks every window at one setting; full: the full pass
    ranking = [c.objective for c in (ours.screening or ours.candidates)]
    print(
        f"model {model} ({family.pretty_name}), {len(windows)} windows of {args.window}, "
        f"{len(pairs)} probes x {len(args.seeds)} seeds, {args.steps} steps, "
        f"CFG {args.guidance}, {args.threads} thread(s)"
    )
    print(f"{'':28}{'wall s':>9}{'in denoiser':>13}")
    print(f"{'(a) paper-style loop':28}{paper_s:9.2f}{paper_denoiser / paper_s:12.0%}")
    print(f"{'(b) locopack ' + args.mode:28}{ours_s:9.2f}{ours_denoiser / ours_s:12.0%}")
    print(f"{'    of which references':28}{refs:9.2f}   (baseline + all-sites lines, not in (a))")
    print(
        f"speed-up (a)/(b): {paper_s / ours_s:.2f}x; without the reference lines "
        f"{paper_s / max(ours_s - refs, 1e-9):.2f}x"
    )
    chosen_paper = int(np.argmin(paper))
    print(
        f"chosen window: paper {chosen_paper}, locopack {ours.chosen} -> "
        f"{'agree' if chosen_paper == ours.chosen else 'DIFFER'}"
    )
    which = "screening" if ours.screening else "full"
    if ours.screening:
        cheapest = int(np.argmin(ranking))
        print(
            f"the screening pass alone would choose {cheapest} -> "
            f"{'agree' if cheapest == chosen_paper else 'DIFFER'}; finalists {ours.finalists}"
        )
    print(
        f"Spearman correlation of the rankings (paper vs locopack {which}): "
        f"{spearman(paper, ranking):.3f}"
    )


if __name__ == "__main__":
    main()
