"""The neuron-editing curve on a toy style recipe: how many neurons remove the style?

For ``k`` overridden neurons (``--ks``), and for each way of choosing and overriding them
(``VARIANTS``), it prints, on the toy world's detectors: the edited attribute's rate on the
edit's prompts, the other attributes those prompts name, the share of ``--unrelated`` captions
nobody listed that keep every attribute they name, and the mean SSIM of those captions' images
against the base's (same seeds).  The variants examine each choice of
:mod:`locopack.edit.neurons` against the model:

- ``both``: what ``locopack neurons`` does: key and value neurons of LocoGen's window ranked
  together by Welch's t on the mean over positions, set to their neutral-prompt mean;
- ``value``: value neurons only.  A key neuron set to one constant at every text position
  drops out of the differences between the positions' attention logits (which constant does
  not matter: softmax cancels it), so it only flattens attention; a value neuron's constant
  replaces what that channel carries from every token;
- ``value-zero``: value neurons set to 0 instead of their neutral mean;
- ``value-per-site``: the same number of neurons at each site instead of one global ranking;
- ``value-all-sites``: every cross-attention site instead of LocoGen's window.

LocoEdit at the window is printed beside the curve for reference, and, to tell whether the
attribute could sit in few neurons at all, how many of the window's key and value neurons hold
90% of the squared change of their outputs (all positions) from the target prompts to the
edit's prompts: the change an override has to undo.

    python scripts/bench_neurons.py [--recipe recipes/toy/erase-stripes.yaml] [--seeds 8]
        [--ks 5 10 25 50 100 200 0] [--unrelated 12]     (k = 0: every neuron of the variant)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_toy_world import (  # noqa: E402
    generate,
    mean_ssim,
    rates,
    specificity,
    unrelated_captions,
    world_of,
)

from locopack.edit import compute_delta  # noqa: E402
from locopack.edit.activations import neuron_prompts, projection_activations  # noqa: E402
from locopack.edit.neurons import NeuronEdit, override_neurons, select_neurons  # noqa: E402
from locopack.localize import ClipScorer, localize  # noqa: E402
from locopack.pipeline.stages import load_base  # noqa: E402
from locopack.recipe import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: name -> (matrices, override value, ranking, sites)
VARIANTS = {
    "both": ("both", "mean", "global", "window"),
    "value": ("value", "mean", "global", "window"),
    "value-zero": ("value", "zero", "global", "window"),
    "value-per-site": ("value", "mean", "per site", "window"),
    "value-all-sites": ("value", "mean", "global", "all"),
}


def per_site(attribute, neutral, k: int) -> NeuronEdit:
    """``k`` neurons split as evenly over the modules as their widths allow."""
    widths = {path: a.shape[1] for path, a in attribute.items()}
    overrides, left = {}, k
    for i, path in enumerate(sorted(widths, key=lambda p: (widths[p], p))):
        share = min(widths[path], left // (len(widths) - i))
        left -= share
        if share:
            one = select_neurons({path: attribute[path]}, {path: neutral[path]}, share)
            overrides.update(one.overrides)
    return NeuronEdit(overrides)


def choose(attribute, neutral, k: int, value: str, ranking: str) -> NeuronEdit:
    """The variant's neuron edit of ``k`` neurons."""
    edit = (per_site if ranking == "per site" else select_neurons)(attribute, neutral, k)
    if value == "zero":
        edit = NeuronEdit({p: (i, torch.zeros_like(v)) for p, (i, v) in edit.overrides.items()})
    return edit


def measure(pipe, edit, sets, seeds, steps, guidance, base_images, tw) -> str:
    """One table row's figures: edited rate, other attributes, unrelated kept, unrelated SSIM."""
    prompts, unrelated = sets["edit prompts"], sets["unrelated"]
    found = rates(generate(pipe, prompts, seeds, steps, guidance), prompts, len(seeds), edit, tw)
    drawn = generate(pipe, unrelated, seeds, steps, guidance)
    kept = specificity(drawn, unrelated, len(seeds), tw)
    ssim = mean_ssim(base_images, drawn)
    others = ", ".join(f"{k} {v:.0%}" for k, v in found.items() if k != "edited")
    return f"{found['edited']:.0%} | {others} | {kept:.0%} | {ssim:.2f}"


@torch.no_grad()
def concentration(pipe, family, layers, originals, targets, which: str) -> tuple[int, int]:
    """(neurons holding 90% of the change's energy, neurons) of the ``which`` projections."""
    denoiser = getattr(pipe, family.denoiser_attr)
    sites = {s.path: s for s in family.sites(denoiser)}
    states = [family.encode(pipe, prompts) for prompts in (originals, targets)]
    energy = []
    for path in layers:
        site = sites[path]
        module = denoiser.get_submodule(getattr(site, which))
        edit, target = (module(family.site_states(denoiser, site, s)) for s in states)
        energy.append((edit - target).double().pow(2).sum(dim=(0, 1)))
    ranked = torch.cat(energy).sort(descending=True).values
    return int((ranked.cumsum(0) < 0.9 * ranked.sum()).sum()) + 1, ranked.numel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes/toy/erase-stripes.yaml")
    parser.add_argument("--seeds", type=int, default=8, help="images per prompt")
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 25, 50, 100, 200, 0])
    parser.add_argument("--unrelated", type=int, default=12, help="unlisted captions drawn")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    recipe = load_recipe(args.recipe)
    tw = world_of(recipe)
    base = load_base(recipe)
    pipe, family = base.pipe, base.family
    pipe.set_progress_bar_config(disable=True)
    edit = recipe.edits[0]
    steps, guidance = recipe.localize.steps, recipe.localize.guidance
    seeds = list(range(1000, 1000 + args.seeds))  # the toy benchmark's seeds
    sets = {
        "edit prompts": edit.originals(),
        "unrelated": unrelated_captions(recipe, args.unrelated),
    }
    t0 = time.perf_counter()
    located = localize(
        base,
        recipe,
        scorer=ClipScorer(recipe.local_path(recipe.localize.scorer)),
        progress=False,
    )
    print(f"## {recipe.name}: LocoGen window {located.layers} ({time.perf_counter() - t0:.0f} s)")
    for which in ("key", "value"):
        held, total = concentration(
            pipe, family, located.layers, edit.originals(), edit.targets_expanded(), which
        )
        print(f"90% of the {which} change from target to edit prompts: {held} of {total} neurons")
    base_images = generate(pipe, sets["unrelated"], seeds, steps, guidance)
    print("| variant | k | edited attribute | other attributes | unrelated kept | unrelated SSIM |")
    print("|---|---|---|---|---|---|")
    print(f"| base | 0 | {measure(pipe, edit, sets, seeds, steps, guidance, base_images, tw)} |")
    with compute_delta(base, recipe, located.layers).applied(pipe.unet):
        row = measure(pipe, edit, sets, seeds, steps, guidance, base_images, tw)
    print(f"| LocoEdit, window | - | {row} |")

    attribute_prompts, neutral_prompts = neuron_prompts(recipe)
    all_sites = [s.path for s in family.sites(pipe.unet)]
    for name in args.variants:
        matrices, value, ranking, where = VARIANTS[name]
        layers = located.layers if where == "window" else all_sites
        attribute, neutral = (
            projection_activations(pipe, family, prompts, layers, matrices)
            for prompts in (attribute_prompts, neutral_prompts)
        )
        total = sum(a.shape[1] for a in attribute.values())
        for k in args.ks:
            k = total if k == 0 or k > total else k
            chosen = choose(attribute, neutral, k, value, ranking)
            with override_neurons(pipe.unet, chosen):
                row = measure(pipe, edit, sets, seeds, steps, guidance, base_images, tw)
            print(f"| {name} | {k} of {total} | {row} |", flush=True)
            if k == total:
                break


if __name__ == "__main__":
    main()
