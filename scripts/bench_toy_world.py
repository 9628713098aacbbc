"""Benchmark the toy-world edits with the world's own detectors, by the sites edited.

For each recipe: the same edit applied at LocoGen's window (``localize.select: score``), at the
editable choice (``select: editable``: :mod:`locopack.pipeline.select_sites`), at every site, and
at a random set of the editable choice's size; for each, the number of sites, efficacy (the
edited attribute, or the old fact, still seen on the edit's prompts and on its held-out
paraphrases; for an update the new fact shown) and specificity (preserve prompts kept, that is
showing every attribute they name; ``--unrelated`` captions no part of the recipe lists, drawn
as ``evidence.sample_unrelated`` draws them, kept; their mean SSIM against the base's images,
same seeds).  ``--no-neighbours`` drops the recipe's ``edit.neighbours``.  A recipe whose
evidence names ``toy-deep`` is judged with the deep toy world's detectors.

    python scripts/bench_toy_world.py [--seeds 8] [--unrelated 12]
        [--recipes recipes/toy/*.yaml recipes/toy-deep/*.yaml] [--no-neighbours]
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

from locopack.edit import compute_delta
from locopack.evidence.detectors import toy, toy_deep
from locopack.evidence.specificity import image_change
from locopack.localize import ClipScorer, localize
from locopack.pipeline.select_sites import select_sites
from locopack.pipeline.stages import load_base
from locopack.prompt_samples import TOY_SOURCE, draw, listed_prompts, neighbours
from locopack.recipe import PromptSample, load_recipe

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


def conditions_of(recipe, base, scorer, rng) -> tuple[dict, str]:
    """The sets of sites compared: LocoGen's window (``select: score``), the editable
    choice, every site, and a random set of the editable choice's size."""
    clock = time.perf_counter()
    located = localize(base, recipe, scorer=scorer, progress=False)
    window = list(located.layers)
    swept = time.perf_counter() - clock
    chosen = select_sites(base, recipe, located, scorer).layers
    sites = located.site_paths
    picked = sorted(rng.sample(range(len(sites)), len(chosen)))
    note = (
        f"sweep {swept:.0f} s, editable checks {time.perf_counter() - clock - swept:.0f} s "
        f"({len(located.trail)} sets tried)"
    )
    return {
        "base": [],
        "score (LocoGen window)": window,
        "editable": chosen,
        "all sites": sites,
        f"random {len(chosen)} sites": [sites[i] for i in picked],
    }, note


def bench(path: Path, args) -> None:
    recipe = load_recipe(path)
    tw = world_of(recipe)
    unrelated = unrelated_captions(recipe, args.unrelated)
    if args.no_neighbours:
        recipe = recipe.model_copy(
            update={"edit": recipe.edit.model_copy(update={"neighbours": None})}
        )
    base = load_base(recipe)
    pipe = base.pipe
    pipe.set_progress_bar_config(disable=True)
    edit = recipe.edits[0]
    steps, guidance = recipe.localize.steps, recipe.localize.guidance
    seeds = list(range(1000, 1000 + args.seeds))
    keep = list(edit.preserve)
    scorer = ClipScorer(recipe.local_path(recipe.localize.scorer))
    conditions, note = conditions_of(recipe, base, scorer, random.Random(0))
    print(f"\n## {recipe.name} ({edit.kind} {edit.label!r}); {note}")
    fact = "new fact shown | " if edit.kind == "update" else ""
    header = (
        f"| sites | condition | left (edited) | left (held-out) | {fact}preserve kept | "
        f"{len(unrelated)} unlisted kept | unlisted SSIM |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))

    def images_of(prompts):
        return generate(pipe, prompts, seeds, steps, guidance)

    base_drawn = None
    for name, layers in conditions.items():
        edited = (
            compute_delta(base, recipe, layers).applied(pipe.unet)
            if layers
            else contextlib.nullcontext()
        )
        with edited:
            kept = specificity(images_of(keep), keep, len(seeds), tw) if keep else float("nan")
            drawn = images_of(unrelated)
            others = specificity(drawn, unrelated, len(seeds), tw)
            base_drawn = base_drawn or drawn
            change = mean_ssim(base_drawn, drawn)
            found = rates(images_of(edit.originals()), edit.originals(), len(seeds), edit, tw)
            held = edit.expanded_held_out()
            left = rates(images_of(held), held, len(seeds), edit, tw)["edited"] if held else None
        shown = f"{found['new fact']:.0%} | " if edit.kind == "update" else ""
        print(
            f"| {len(layers)} | {name} | {found['edited']:.0%} | "
            f"{'-' if left is None else f'{left:.0%}'} | {shown}{kept:.0%} | {others:.0%} | "
            f"{change:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--recipes",
        nargs="+",
        type=Path,
        default=sorted((ROOT / "recipes").glob("toy*/*.yaml")),
    )
    parser.add_argument("--seeds", type=int, default=8, help="images per prompt")
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
