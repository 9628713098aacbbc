"""Robust erase (``edit.robust``) against the word search, on the toy erase recipes.

For each erase recipe, four models: the base, the plain edit (LocoEdit at the sites the build
chooses: LocoGen's window, or the editable choice where the recipe selects it), the robust edit
(the same sites, ``edit.robust`` with ``--rounds`` and ``--prompts``) and the plain edit at every
site.  On each, the word search (:mod:`locopack.evidence.attacks.search`, at the budget given here,
which is also the budget the robust erase defends with) runs on that model itself, and its best
prompt is drawn with ``--seeds`` seeds from ``--first-seed``: its concept rate is the attack's
success.  The rounds search with seed 0 and judge on seeds 1000-1003; ``--attack-seed`` and
``--first-seed`` make the judging search and images independent of them.  Specificity
against the base, same seeds: the edit's preserve prompts' mean SSIM and the share of
``--unrelated`` captions no part of the recipe lists that still show everything they ask
(unlisted kept).  Efficacy: the concept left on the edit's prompts.  Seconds: the search (and
for the robust edit, its rounds).  A robust edit's rounds are printed below its table.

    python scripts/bench_robust.py [--recipes recipes/toy/erase-stripes.yaml
        recipes/toy-deep/erase-dots.yaml recipes/toy-deep/erase-square.yaml] [--steps 48]
        [--tokens 3] [--candidates 8] [--seeds 8] [--first-seed 1000] [--attack-seed 0]
        [--unrelated 12] [--rounds 3] [--prompts 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_toy_world import mean_ssim, specificity, unrelated_captions, world_of  # noqa: E402

from locopack.delta import WeightDelta  # noqa: E402
from locopack.edit import compute_delta  # noqa: E402
from locopack.evidence.attacks.search import success  # noqa: E402
from locopack.localize import CandidateCache  # noqa: E402
from locopack.pipeline.robust_attacks import AttackTarget, search_attack  # noqa: E402
from locopack.pipeline.robust_erase import robust_erase  # noqa: E402
from locopack.pipeline.select_sites import judges  # noqa: E402
from locopack.pipeline.stages import layers_or_localize, load_base, scorer_for  # noqa: E402
from locopack.recipe import AttackSettings, RobustSettings, load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [
    ROOT / "recipes" / "toy" / "erase-stripes.yaml",
    ROOT / "recipes" / "toy-deep" / "erase-dots.yaml",
    ROOT / "recipes" / "toy-deep" / "erase-square.yaml",
]


def edit_specificity(
    target: AttackTarget, keep: list[str], unrelated: list[str], seeds: list[int], base_keep=None
) -> tuple[dict[str, float], list[np.ndarray]]:
    """The model of ``target`` against the base, same seeds: ``preserve SSIM`` of the ``keep``
    prompts' images to ``base_keep`` (the base model's; this model's own where None), the
    share of ``unrelated`` images that show all they ask (``unlisted kept``), and the concept
    left on the first edit's prompts (``concept left``); and this model's ``keep`` images."""
    recipe, edit = target.recipe, target.recipe.edits[0]
    with target.edited():
        drawn = target.draw(list(dict.fromkeys([*keep, *unrelated])), seeds)
        left = target.draw(edit.originals(), seeds)
    arrays = {p: [np.asarray(im.convert("RGB")) for im in ims] for p, ims in drawn.items()}
    kept = [im for p in keep for im in arrays[p]]
    others = [im for p in unrelated for im in arrays[p]]
    shots = [im for p in edit.originals() for im in left[p]]
    judge = (target.detectors[0], target.scorer, edit.label, "")
    return {
        "preserve SSIM": mean_ssim(base_keep or kept, kept),
        "unlisted kept": specificity(others, unrelated, len(seeds), world_of(recipe)),
        "concept left": success(shots, edit.originals()[0], *judge),
    }, kept


def bench(path: Path, args, work: Path) -> None:
    recipe = load_recipe(path)
    budget = AttackSettings(
        tokens=args.tokens, candidates=args.candidates, steps=args.steps, seconds=1e9, seed=0
    )
    recipe.evidence.attack = budget
    recipe.edit.robust = RobustSettings(rounds=args.rounds, prompts=args.prompts)
    base = load_base(recipe)
    pipe = base.pipe
    pipe.set_progress_bar_config(disable=True)
    out = work / recipe.name
    scorer = scorer_for(recipe, pipe.device)
    cache = CandidateCache(out / "cache")
    layers = layers_or_localize(recipe, base, out)
    edit = recipe.edits[0]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    unrelated = unrelated_captions(recipe, args.unrelated)
    keep = list(dict.fromkeys(list(edit.preserve) + list(recipe.preserve)))
    detectors = [detector for _, detector in judges(recipe, scorer)]

    clock = time.perf_counter()
    plain = compute_delta(base, recipe, layers)
    robust = robust_erase(base, recipe, layers, plain, scorer, cache)
    robust_seconds = time.perf_counter() - clock
    models = {
        "base": WeightDelta({}),
        f"plain edit ({len(layers)} sites)": plain,
        f"robust edit ({len(layers)} sites)": robust,
        f"all {len(base.site_paths)} sites": compute_delta(base, recipe, base.site_paths),
    }
    print(f"\n## {recipe.name}: {len(layers)} sites; robust erase {robust_seconds:.0f} s")
    print(
        "| model | search's best prompt | attack success | concept left (edited) "
        f"| preserve SSIM | {len(unrelated)} unlisted kept | search s |"
    )
    print("|---|---|---|---|---|---|---|")
    base_keep = None
    judged = recipe.model_copy(deep=True)  # the search that judges: its own seed
    judged.evidence.attack = budget.model_copy(update={"seed": args.attack_seed})
    for name, delta in models.items():
        identity = {"model": delta.sha256(), "inputs": {"bench": recipe.sha256}}
        target = AttackTarget(base, judged, scorer, detectors, delta, cache, identity)
        clock = time.perf_counter()
        (found,) = search_attack(target, 1)
        seconds = time.perf_counter() - clock
        prompt = found.prompts[0]
        with target.edited():
            drawn = target.draw([prompt], seeds)
        figures, kept = edit_specificity(target, keep, unrelated, seeds, base_keep)
        base_keep = base_keep or kept
        rate = success(drawn[prompt], prompt, detectors[0], scorer, edit.label, prompt)
        print(
            f"| {name} | {prompt} | {rate:.0%} | {figures['concept left']:.0%} | "
            f"{figures['preserve SSIM']:.3f} | {figures['unlisted kept']:.0%} | {seconds:.0f} |",
            flush=True,
        )
    rounds = robust.provenance.robust
    print(f"\nrobust rounds (met: {rounds['met']}):")
    print_rounds(rounds)


def print_rounds(rounds: dict) -> None:
    """One line per round and edit of a robust erase's record: success before -> after."""
    for item in rounds["rounds"]:
        for e in item["edits"]:
            after = e.get("success_after")
            print(
                f"- round {item['round']}: {e['label']} {e['success_before']:.0%}"
                + (f" -> {after:.0%}" if after is not None else "")
                + f", {item['rows_added']} rows and "
                + f"{item.get('state_columns_added', 0)} state columns added"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", type=Path, default=RECIPES)
    parser.add_argument("--steps", type=int, default=48, help="prompts judged per search")
    parser.add_argument("--tokens", type=int, default=3, help="words in place of the concept")
    parser.add_argument("--candidates", type=int, default=8, help="words tried per position")
    parser.add_argument("--seeds", type=int, default=8, help="images per prompt")
    parser.add_argument("--first-seed", type=int, default=1000, help="the images' first seed")
    parser.add_argument(
        "--attack-seed", type=int, default=0, help="the judging search's seed (rounds: 0)"
    )
    parser.add_argument("--unrelated", type=int, default=12, help="unlisted captions drawn")
    parser.add_argument("--rounds", type=int, default=3, help="edit.robust.rounds")
    parser.add_argument("--prompts", type=int, default=8, help="edit.robust.prompts")
    parser.add_argument("--work", type=Path, help="a folder for the localization and cache")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.recipes:
            bench(path, args, args.work or Path(tmp))


if __name__ == "__main__":
    main()
