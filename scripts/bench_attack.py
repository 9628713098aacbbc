"""Every attack (:mod:`locopack.evidence.attacks`) against four models of each toy erase recipe:
the base, the plain edit, the robust edit and the edit at every site; their specificity; the
time each attack took.

For each recipe: the sites the build chooses (LocoGen's window, or the editable choice where the
recipe selects it), LocoEdit there (plain), robust erase of that edit (``edit.robust`` with
``--rounds``, ``--prompts`` and ``--robust-attacks``, defending at the budgets below) and
LocoEdit at every site. Each attack of the registry then runs at the recipe's budgets (the word
search at ``--steps``/``--tokens``/``--candidates``/``--confirm``, larger than a build's; the
others at their defaults, :mod:`locopack.recipe.attacks`, or
``--soft-steps``/``--vector-steps``) against each model, judged by the recipe's rate detector
over ``--seeds`` seeds from ``--first-seed`` (2000: seeds no robust round drew; the rounds judge
on the evidence's seeds 1000-1003). The base model's runs are shared through the cache, so the
seconds of the plain edit's column include the base's. Specificity against the base, same seeds:
the preserve prompts' mean SSIM, the share of ``--unrelated`` captions no part of the recipe
lists that still show everything they ask (unlisted kept), and the concept left on the edit's
own prompts.  The full setting is both toy
worlds, their erase recipes and 8 seeds:

    python scripts/bench_attack.py --recipes recipes/toy/erase-*.yaml \\
        recipes/toy-deep/erase-*.yaml --seeds 8

A replay file of prompts (one a line) is attacked too with ``--replay FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_robust import edit_specificity, print_rounds  # noqa: E402
from bench_toy_world import unrelated_captions  # noqa: E402

from locopack.delta import WeightDelta  # noqa: E402
from locopack.edit import compute_delta  # noqa: E402
from locopack.evidence.attacks import ATTACKS, AttackContext  # noqa: E402
from locopack.evidence.before_after import generate_images  # noqa: E402
from locopack.localize import CandidateCache  # noqa: E402
from locopack.pipeline.robust_attacks import AttackTarget  # noqa: E402
from locopack.pipeline.robust_erase import robust_erase  # noqa: E402
from locopack.pipeline.select_sites import judges  # noqa: E402
from locopack.pipeline.stages import layers_or_localize, load_base, scorer_for  # noqa: E402
from locopack.recipe import AttackSettings, RobustSettings, load_recipe  # noqa: E402
from locopack.recipe.attacks import ReplaySettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("base", "plain", "robust", "all sites")


def models_of(recipe, base, args, work: Path, scorer) -> tuple[dict, list[str], dict]:
    """``({model: delta}, the chosen sites, robust erase's record and seconds)``."""
    layers = layers_or_localize(recipe, base, work)
    plain = compute_delta(base, recipe, layers)
    defended = recipe.model_copy(deep=True)
    defended.edit.robust = RobustSettings(
        rounds=args.rounds, attacks=args.robust_attacks, prompts=args.prompts
    )
    clock = time.perf_counter()
    robust = robust_erase(base, defended, layers, plain, scorer, CandidateCache(work / "rounds"))
    record = robust.provenance.robust | {"seconds": time.perf_counter() - clock}
    every = compute_delta(base, recipe, base.site_paths)
    deltas = dict(zip(MODELS, (WeightDelta({}), plain, robust, every), strict=True))
    return deltas, layers, record


def attack_table(recipe, base, deltas, detector, scorer, seeds, cache) -> tuple[dict, dict]:
    """Per attack row name: ``{"budget", "chance", model: success}``; per attack: the seconds
    of its run against each edited model (the plain edit's include the base's)."""
    pipe, family, draw_with = base.pipe, base.family, recipe.localize
    table: dict[str, dict] = {}
    seconds: dict[str, dict[str, float]] = {}

    def draw(prompts, chosen):
        how = (draw_with.steps, draw_with.guidance, draw_with.resolution)
        return generate_images(base, prompts, chosen, *how)

    denoiser = base.denoiser
    for model in MODELS[1:]:
        delta = deltas[model]
        ctx = AttackContext(
            pipe, family, recipe, draw, lambda d=delta: d.applied(denoiser), detector, scorer,
            seeds, draw_with.steps, draw_with.guidance, draw_with.resolution,
            lambda stem, rows: "", cache=cache,
            inputs={"bench": recipe.sha256, "model": delta.sha256()},
            base_inputs={"bench": recipe.sha256},
        )  # fmt: skip
        for attack in ATTACKS.values():
            settings = attack.settings(recipe)
            if settings is None:
                continue
            clock = time.perf_counter()
            with torch.no_grad():
                run = attack.run(ctx, settings)
            seconds.setdefault(attack.pretty_name, {})[model] = time.perf_counter() - clock
            for r in run.rows:
                entry = table.setdefault(r["name"], {"budget": r["budget"], "base": r["base"]})
                entry[model] = r["edited"]
                entry.setdefault("chance", {})[model] = (r.get("chance") or {}).get("edited")
                entry["chance"]["base"] = (r.get("chance") or {}).get("base")
            for s in run.skipped:
                table.setdefault(f"{attack.pretty_name}: skipped", {"budget": s["why"]})
    return table, seconds


def _rate(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def bench(path: Path, args, work: Path) -> None:
    recipe = load_recipe(path)
    recipe.evidence.attack = AttackSettings(
        tokens=args.tokens,
        candidates=args.candidates,
        steps=args.steps,
        seconds=1e9,
        seed=0,
        confirm=args.confirm,
    )
    if args.replay:
        recipe.evidence.attacks.replay = ReplaySettings(prompts=str(args.replay.resolve()))
    budgets = recipe.evidence.attacks
    if args.soft_steps is not None and budgets.soft_prompt is not None:
        budgets.soft_prompt = budgets.soft_prompt.model_copy(update={"steps": args.soft_steps})
    if args.vector_steps is not None and budgets.concept_vector is not None:
        update = {"steps": args.vector_steps}
        budgets.concept_vector = budgets.concept_vector.model_copy(update=update)
    base = load_base(recipe)
    base.pipe.set_progress_bar_config(disable=True)
    scorer = scorer_for(recipe, base.pipe.device)
    out = work / recipe.name
    deltas, layers, rounds = models_of(recipe, base, args, out, scorer)
    detectors = [detector for _, detector in judges(recipe, scorer)]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    cache = CandidateCache(out / "bench")
    table, seconds = attack_table(recipe, base, deltas, detectors[0], scorer, seeds, cache)
    sites = f"{len(layers)} of {len(base.site_paths)} sites"
    print(f"\n## {recipe.name}: {sites}; {len(seeds)} seeds from {args.first_seed}")
    print("| attack | budget | base | plain | robust | all sites |")
    print("|---|---|---|---|---|---|")
    for name, entry in table.items():
        figures = " | ".join(_rate(entry.get(m)) for m in MODELS)
        print(f"| {name} | {entry['budget']} | {figures} |")
    chances = next((e["chance"] for e in table.values() if e.get("chance")), {})
    figures = " | ".join(_rate(chances.get(m)) for m in MODELS)
    print(f"| chance (the prompt without the concept) | | {figures} |")
    print("\n| seconds of | plain (with base) | robust | all sites |\n|---|---|---|---|")
    for name, times in seconds.items():
        print(f"| {name} (s) | " + " | ".join(f"{times[m]:.0f}" for m in MODELS[1:]) + " |")
    edit = recipe.edits[0]
    keep = list(dict.fromkeys(list(edit.preserve) + list(recipe.preserve)))
    unrelated = unrelated_captions(recipe, args.unrelated)
    print(f"\n| model | concept left | preserve SSIM | {len(unrelated)} unlisted kept |")
    print("|---|---|---|---|")
    base_keep = None
    for model in MODELS:
        target = AttackTarget(base, recipe, scorer, detectors, deltas[model], cache, {})
        figures, kept = edit_specificity(target, keep, unrelated, seeds, base_keep)
        base_keep = base_keep or kept
        print(
            f"| {model} | {figures['concept left']:.0%} | {figures['preserve SSIM']:.3f} | "
            f"{figures['unlisted kept']:.0%} |"
        )
    print(
        f"\nrobust erase ({', '.join(rounds['attacks'])}; {rounds['seconds']:.0f} s, "
        f"met: {rounds['met']}, deterministic: {rounds['deterministic']}):"
    )
    print_rounds(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--recipes",
        nargs="+",
        type=Path,
        default=sorted((ROOT / "recipes" / "toy").glob("erase-*.yaml")),
    )
    parser.add_argument("--replay", type=Path, help="a file of attack prompts, one a line")
    parser.add_argument("--steps", type=int, default=48, help="word search: prompts judged")
    parser.add_argument("--tokens", type=int, default=3, help="word search: words")
    parser.add_argument("--candidates", type=int, default=8, help="word search: tries/position")
    parser.add_argument(
        "--confirm", type=int, default=8, help="word search: best prompts drawn with every seed"
    )
    parser.add_argument("--soft-steps", type=int, help="soft prompt: optimiser steps")
    parser.add_argument("--vector-steps", type=int, help="concept vector: text encodings")
    parser.add_argument("--seeds", type=int, default=8, help="images per attack prompt")
    parser.add_argument("--first-seed", type=int, default=2000, help="the images' first seed")
    parser.add_argument("--rounds", type=int, default=3, help="edit.robust.rounds")
    parser.add_argument("--prompts", type=int, default=4, help="edit.robust.prompts")
    parser.add_argument(
        "--robust-attacks",
        nargs="+",
        default=["search", "concept_vector", "soft_prompt"],
        help="edit.robust.attacks",
    )
    parser.add_argument("--unrelated", type=int, default=12, help="unlisted captions drawn")
    parser.add_argument("--work", type=Path, help="a folder for the localization and caches")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.stdout.reconfigure(line_buffering=True)  # each table as it is measured
    with contextlib.suppress(BrokenPipeError), tempfile.TemporaryDirectory() as tmp:
        for path in args.recipes:
            bench(path, args, args.work or Path(tmp))


if __name__ == "__main__":
    main()
