"""The search attack on the toy erase recipes, at a budget larger than a build's.

For each erase recipe: LocoEdit at LocoGen's window, then the evidence's search attack
(:mod:`locopack.release.attack`: whole words of the tokenizer, every word related to the
concept removed) on the base and on the edited model, judged by the recipe's rate detector.
It prints the vocabulary size, the random start's concept rate (chance) and, for the best
prompt of each search, its concept rate on the base and on the edited model over ``--seeds``
seeds.

    python scripts/bench_attack.py [--recipes recipes/toy/erase-*.yaml] [--steps 48]
        [--tokens 3] [--candidates 8] [--seeds 8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_toy_world import generate  # noqa: E402

from locopack.detectors import load_detector  # noqa: E402
from locopack.edit import compute_delta  # noqa: E402
from locopack.localize import ClipScorer, localize  # noqa: E402
from locopack.recipe import AttackSettings, load_recipe  # noqa: E402
from locopack.release.attack import run_attacks  # noqa: E402
from locopack.release.stages import load_base  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def bench(path: Path, args) -> None:
    recipe = load_recipe(path)
    recipe.evidence.attack = AttackSettings(
        tokens=args.tokens, candidates=args.candidates, steps=args.steps, seconds=1e9, seed=0
    )
    base = load_base(recipe)
    pipe, family = base.pipe, base.family
    pipe.set_progress_bar_config(disable=True)
    steps, guidance = recipe.localize.steps, recipe.localize.guidance
    scorer = ClipScorer(recipe.local_path(recipe.localize.scorer))
    located = localize(pipe, family, recipe, scorer=scorer, progress=False)
    delta = compute_delta(pipe, family, recipe, located.layers)
    detectors = [
        load_detector(d.name, d.options, scorer)
        for d in recipe.evidence.detectors
        if d.name != "clip"
    ]
    seeds = list(range(1000, 1000 + args.seeds))

    def draw(prompts, chosen):
        from PIL import Image

        images = generate(pipe, prompts, chosen, steps, guidance)
        n = len(chosen)
        return {
            p: [Image.fromarray(a) for a in images[i * n : (i + 1) * n]]
            for i, p in enumerate(prompts)
        }

    t0 = time.perf_counter()
    found = run_attacks(
        recipe,
        pipe.tokenizer,
        draw,
        lambda: delta.applied(pipe.unet),
        detectors,
        scorer,
        seeds,
        lambda stem, rows: "",
    )
    print(f"\n## {recipe.name}: window {located.layers}; {time.perf_counter() - t0:.0f} s")
    print("| search on | best prompt found | concept rate on base | on edited | judged |")
    print("|---|---|---|---|---|")
    for attack in found["edits"]:
        chance = attack["chance"]
        print(
            f"| (random start) | {chance['prompt']} | {chance['before']:.0%} "
            f"| {chance['after']:.0%} | vocabulary {attack['vocabulary']} |"
        )
        for model, item in attack["searches"].items():
            print(
                f"| {model} | {item['prompt']} | {item['success']['before']:.0%} "
                f"| {item['success']['after']:.0%} | {item['evaluations']} prompts |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--recipes",
        nargs="+",
        type=Path,
        default=sorted((ROOT / "recipes" / "toy").glob("erase-*.yaml")),
    )
    parser.add_argument("--steps", type=int, default=48, help="prompts judged per search")
    parser.add_argument("--tokens", type=int, default=3, help="words in place of the concept")
    parser.add_argument("--candidates", type=int, default=8, help="words tried per position")
    parser.add_argument("--seeds", type=int, default=8, help="images per found prompt")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for path in args.recipes:
        bench(path, args)


if __name__ == "__main__":
    main()
