"""Benchmark the toy-world edits with the world's own detectors.

For each recipe in recipes/toy/: the edited attribute's detection rate before and after, on
the edit's prompts and on its held-out paraphrases; the other attributes' rates before and
after (specificity), on the edit's prompts, on its preserve prompts and on ``--unrelated``
captions that no part of the recipe lists (drawn as ``evidence.sample_unrelated`` draws them,
never one of ``edit.neighbours``); and the same edit applied at LocoGen's window, at random
windows of the same size, at the single site LocoGen ranks best (a window of 1) and at all
sites, with the unrelated captions' mean SSIM against the base's images (same seeds).
``--no-neighbours`` drops the recipe's ``edit.neighbours`` (what they buy).  A recipe whose
evidence names the ``toy-deep`` detector is judged with the deep toy world's detectors
(``--recipes recipes/toy-deep/*.yaml``).

Goals: an erased attribute drops by >= 50 points; other attributes stay within 10 points; a
fact update reaches >= 70% of images showing the new fact.

    python scripts/bench_toy_world.py [--seeds 8] [--random 3] [--unrelated 12]
        [--recipes recipes/toy/*.yaml] [--no-neighbours]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from locopack.detectors import toy, toy_deep
from locopack.edit import compute_delta
from locopack.localize import ClipScorer, localize
from locopack.prompt_samples import TOY_SOURCE, draw, listed_prompts, neighbours
from locopack.recipe import PromptSample, load_recipe
from locopack.release.specificity import image_change
from locopack.release.stages import load_base

ROOT = Path(__file__).resolve().parents[1]


def generate(pipe, prompts, seeds, steps, guidance) -> list[np.ndarray]:
    """uint8 images: every prompt with every seed, batched per prompt."""
    out = []
    for prompt in prompts:
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        images = pipe(
            prompt,
            num_images_per_prompt=len(seeds),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="np",
        ).images
        out += [(im * 255).round().astype(np.uint8) for im in images]
    return out


def world_of(recipe):
    """The toy world whose detectors judge ``recipe``: the one its evidence names."""
    names = {d.name for d in recipe.evidence.detectors}
    return toy_deep if "toy-deep" in names else toy


def rates(images, prompts, n_seeds, edit, tw) -> dict[str, float]:
    """Detection rates: the edited attribute ('edited'), the new fact ('new fact'), and each
    other attribute the prompt names ('color', 'shape', ...: found as asked), in world ``tw``."""
    found = [tw.detect(im) for im in images]
    wanted = [tw.caption_attributes(p) for p in prompts for _ in range(n_seeds)]
    out = {}
    if edit.kind == "erase":
        key = "texture" if edit.attribute == "style" else "shape"
        out["edited"] = float(np.mean([f[key] == edit.label for f in found]))
        others = [k for k in tw.ATTRIBUTES if k != key]
    else:
        old = tw.FACTS[edit.label]
        new = tw.caption_attributes(edit.targets_expanded()[0])
        out["edited"] = float(np.mean([tuple(f[k] for k in tw.ATTRIBUTES) == old for f in found]))
        out["new fact"] = float(np.mean([all(f[k] == new[k] for k in new) for f in found]))
        others = []
    for key in others:
        pairs = [(f[key], w[key]) for f, w in zip(found, wanted, strict=True) if key in w]
        if pairs:
            out[key] = float(np.mean([a == b for a, b in pairs]))
    return out


def specificity(images, prompts, n_seeds, tw) -> float:
    """Share of images showing every attribute their (preserve) prompt names, in world ``tw``."""
    found = [tw.detect(im) for im in images]
    wanted = [tw.caption_attributes(p) for p in prompts for _ in range(n_seeds)]
    return float(
        np.mean([all(f[k] == v for k, v in w.items()) for f, w in zip(found, wanted, strict=True)])
    )


def unrelated_captions(recipe, count: int) -> list[str]:
    """``count`` toy captions no part of the recipe lists, its neighbours included."""
    spec = recipe.evidence.sample_unrelated or PromptSample(count=count, source=TOY_SOURCE, seed=1)
    spec = spec.model_copy(update={"count": count})
    taken = listed_prompts(recipe) + neighbours(recipe)
    return draw(recipe, spec, taken, "--unrelated")


def mean_ssim(before, after) -> float:
    """Mean SSIM of same-seed image pairs (uint8 arrays)."""
    pairs = zip(before, after, strict=True)
    return float(
        np.mean([image_change(Image.fromarray(b), Image.fromarray(a))["ssim"] for b, a in pairs])
    )


def bench(path: Path, args) -> None:
    recipe = load_recipe(path)
    tw = world_of(recipe)
    unrelated = unrelated_captions(recipe, args.unrelated)
    if args.no_neighbours:
        recipe = recipe.model_copy(
            update={"edit": recipe.edit.model_copy(update={"neighbours": None})}
        )
    base = load_base(recipe)
    pipe, family = base.pipe, base.family
    pipe.set_progress_bar_config(disable=True)
    edit = recipe.edits[0]
    steps, guidance = recipe.localize.steps, recipe.localize.guidance
    seeds = list(range(1000, 1000 + args.seeds))  # not the localization seed
    sets = {"edit prompts": edit.originals(), "held-out": edit.expanded_held_out()}
    keep = list(edit.preserve)
    t0 = time.perf_counter()
    scorer = ClipScorer(recipe.local_path(recipe.localize.scorer))
    located = localize(pipe, family, recipe, scorer=scorer, progress=False)
    single = recipe.model_copy(
        update={"localize": recipe.localize.model_copy(update={"window": 1})}
    )
    best_site = localize(pipe, family, single, scorer=scorer, progress=False)
    sites = located.site_paths
    size = located.window
    rng = random.Random(0)
    starts = [i for i in range(len(sites) - size + 1) if i != located.chosen]
    conditions = {"base": None, f"LocoGen window {located.chosen}": located.layers}
    for start in rng.sample(starts, min(args.random, len(starts))):
        conditions[f"random window {start}"] = sites[start : start + size]
    conditions[f"best single site {best_site.chosen}"] = best_site.layers
    conditions["all sites"] = sites
    print(
        f"\n## {recipe.name} ({edit.kind} {edit.label!r}); localized in "
        f"{time.perf_counter() - t0:.0f} s to {located.layers} "
        f"(window scores: {', '.join(f'{c.mean:.1f}' for c in located.candidates)})"
    )
    header = (
        "| condition | set | edited attribute | "
        + ("new fact | " if edit.kind == "update" else "other attributes | ")
        + f"preserve prompts | {len(unrelated)} unrelated captions | unrelated SSIM |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    base_drawn = None
    for name, layers in conditions.items():
        edited = (
            compute_delta(pipe, family, recipe, layers).applied(pipe.unet)
            if layers
            else contextlib.nullcontext()
        )
        with edited:
            kept = (
                specificity(generate(pipe, keep, seeds, steps, guidance), keep, len(seeds), tw)
                if keep
                else float("nan")
            )
            drawn = generate(pipe, unrelated, seeds, steps, guidance)
            others = specificity(drawn, unrelated, len(seeds), tw)
            base_drawn = base_drawn or drawn
            change = mean_ssim(base_drawn, drawn)
            for set_name, prompts in sets.items():
                found = rates(
                    generate(pipe, prompts, seeds, steps, guidance), prompts, len(seeds), edit, tw
                )
                extra = (
                    f"{found['new fact']:.0%}"
                    if edit.kind == "update"
                    else ", ".join(f"{k} {v:.0%}" for k, v in found.items() if k != "edited")
                )
                print(
                    f"| {name} | {set_name} | {found['edited']:.0%} | {extra} | {kept:.0%} "
                    f"| {others:.0%} | {change:.2f} |"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--recipes", nargs="+", type=Path, default=sorted((ROOT / "recipes" / "toy").glob("*.yaml"))
    )
    parser.add_argument("--seeds", type=int, default=8, help="images per prompt")
    parser.add_argument("--random", type=int, default=3, help="random windows to compare")
    parser.add_argument("--unrelated", type=int, default=12, help="unlisted captions drawn")
    parser.add_argument(
        "--no-neighbours", action="store_true", help="drop the recipes' edit.neighbours"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for path in args.recipes:
        bench(path, args)


if __name__ == "__main__":
    main()
