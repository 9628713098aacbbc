"""Every attack (:mod:`locopack.evidence.attacks`) on the toy erase recipes: success on the base
model and on the plain edit, and the time each attack took.

For each erase recipe: LocoEdit at LocoGen's window, then each attack of the registry at the
recipe's budgets (the word search at ``--steps``/``--tokens``/``--candidates``, larger than a
build's; the others at their defaults, :mod:`locopack.recipe.attacks`) on the base and on the
edited model, judged by the recipe's rate detector over ``--seeds`` seeds.  It prints one table
per recipe: attack, budget, success on base, success on the plain edit, chance (base / edited),
seconds.  The full setting is both toy worlds and 8 seeds (about 25 minutes on one core):

    python scripts/bench_attack.py --recipes recipes/toy/erase-*.yaml \\
        recipes/toy-deep/erase-*.yaml --seeds 8

A replay file of prompts (one a line) is attacked too with ``--replay FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from locopack.edit import compute_delta  # noqa: E402
from locopack.evidence.attacks import ATTACKS, AttackContext  # noqa: E402
from locopack.evidence.before_after import generate_images  # noqa: E402
from locopack.evidence.detectors import load_detector  # noqa: E402
from locopack.localize import ClipScorer, localize  # noqa: E402
from locopack.pipeline.stages import load_base  # noqa: E402
from locopack.recipe import AttackSettings, load_recipe  # noqa: E402
from locopack.recipe.attacks import ReplaySettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def context(path: Path, args) -> tuple[AttackContext, list[str]]:
    """The attacks' context for the recipe at ``path``: base, plain edit, detector, seeds."""
    recipe = load_recipe(path)
    recipe.evidence.attack = AttackSettings(
        tokens=args.tokens, candidates=args.candidates, steps=args.steps, seconds=1e9, seed=0
    )
    if args.replay:
        recipe.evidence.attacks.replay = ReplaySettings(prompts=str(args.replay.resolve()))
    base = load_base(recipe)
    pipe, family = base.pipe, base.family
    pipe.set_progress_bar_config(disable=True)
    settings = recipe.localize
    scorer = ClipScorer(recipe.local_path(settings.scorer))
    located = localize(base, recipe, scorer=scorer, progress=False)
    delta = compute_delta(base, recipe, located.layers)
    detectors = [load_detector(d.name, d.options, scorer) for d in recipe.evidence.detectors]
    rate = next((d for d in detectors if d.kind == "rate"), None)
    seeds = list(range(1000, 1000 + args.seeds))

    def draw(prompts, chosen):
        args_ = (settings.steps, settings.guidance, settings.resolution)
        return generate_images(base, prompts, chosen, *args_)

    ctx = AttackContext(
        pipe, family, recipe, draw, lambda: delta.applied(pipe.unet), rate, scorer, seeds,
        settings.steps, settings.guidance, settings.resolution, lambda stem, rows: "",
    )  # fmt: skip
    return ctx, located.layers


def bench(path: Path, args) -> None:
    ctx, layers = context(path, args)
    print(f"\n## {ctx.recipe.name}: window {layers}; {len(ctx.seeds)} seeds")
    print("| attack | budget | success on base | on plain edit | chance (base / edited) | s |")
    print("|---|---|---|---|---|---|")
    for name, attack in ATTACKS.items():
        settings = attack.settings(ctx.recipe)
        if settings is None or (args.attacks and name not in args.attacks):
            continue
        began = time.perf_counter()
        with torch.no_grad():
            run = attack.run(ctx, settings)
        seconds = time.perf_counter() - began
        for r in run.rows:
            chance = r["chance"]
            chance = f"{chance['base']:.0%} / {chance['edited']:.0%}" if chance else "–"
            print(
                f"| {r['name']} | {r['budget']} | {r['base']:.0%} | {r['edited']:.0%} "
                f"| {chance} | {seconds:.0f} |"
            )
            if r.get("found"):
                print(f"|  found | base: {r['found']['base']!r} | edited: {r['found']['edited']!r}")
        for s in run.skipped:
            print(f"| {attack.pretty_name} | skipped: {s['why']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--recipes",
        nargs="+",
        type=Path,
        default=sorted((ROOT / "recipes" / "toy").glob("erase-*.yaml")),
    )
    parser.add_argument("--attacks", nargs="*", help="only these (registry names)")
    parser.add_argument("--replay", type=Path, help="a file of attack prompts, one a line")
    parser.add_argument("--steps", type=int, default=48, help="word search: prompts judged")
    parser.add_argument("--tokens", type=int, default=3, help="word search: words")
    parser.add_argument("--candidates", type=int, default=8, help="word search: tries/position")
    parser.add_argument("--seeds", type=int, default=8, help="images per attack prompt")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.stdout.reconfigure(line_buffering=True)  # each row as it is measured
    with contextlib.suppress(BrokenPipeError):
        for path in args.recipes:
            bench(path, args)


if __name__ == "__main__":
    main()
