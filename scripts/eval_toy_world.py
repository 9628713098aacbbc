"""Evaluate the toy-world model: prompt following (by the detectors) and the CLIP scorer.

``--world deep`` evaluates the deep toy world the same way, with its four attributes (size
too) and its facts; the counts below are the toy world's.

Prompt following: images generated at DDIM 20 steps, CFG 4, from noise seeds never used in
training or in ``train_toy_world.py``'s check, judged by ``toy_world.detect``:

- ``train templates``: 96 prompts from the two training templates that name every attribute,
  (color, shape, texture) balanced; reports color / shape / texture / all-three accuracy;
- ``held-out template``: the same 96 attribute triples in :data:`toy_world.HELD_OUT_TEMPLATES`;
- ``facts``: 16 images per fact from the training fact templates (right = all three
  attributes of the fact's appearance), and 16 per fact from the held-out fact template.

Scorer sanity, on fresh ground-truth renders: top-1 of the right caption among the 72
"a {color} {shape} on a {texture} background" captions; per attribute, among captions that
change only that attribute; the held-out template; the right fact name of the two.  The same
72-way top-1 is reported on the generated images (judged against their prompts).

Usage: nice -n 10 python scripts/eval_toy_world.py [--world toy|deep]
       [--model recipes/toy/toy-world] [--scorer recipes/toy/toy-clip] [--json results.json]
       [--grid samples.png]
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import toy_world as tw  # noqa: E402

#: worlds: name -> (world module, default --model, default --scorer)
WORLDS = {
    "toy": ("toy_world", "recipes/toy/toy-world", "recipes/toy/toy-clip"),
    "deep": ("toy_world_deep", "recipes/toy-deep/toy-world", "recipes/toy-deep/toy-clip"),
}
SEED0 = 50_000  # noise seeds SEED0, SEED0 + 1, ...


def use_world(name: str) -> None:
    """Judge world ``name``: its module, every attribute combination, the templates naming all."""
    global tw, COMBOS, FULL_TEMPLATES
    tw = importlib.import_module(WORLDS[name][0])
    COMBOS = list(itertools.product(*(tw.VALUES[k] for k in tw.ATTRIBUTES)))
    FULL_TEMPLATES = [
        t for t, _ in tw.TRAIN_TEMPLATES if all("{" + k + "}" in t for k in tw.ATTRIBUTES)
    ]


use_world("toy")


def generate(pipe, prompts: list[str], seed0: int, cfg: float, batch: int = 16) -> np.ndarray:
    """uint8 images, one per prompt, the i-th from ``torch.Generator().manual_seed(seed0 + i)``."""
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        gens = [torch.Generator().manual_seed(seed0 + i + j) for j in range(len(chunk))]
        images = pipe(
            chunk, num_inference_steps=20, guidance_scale=cfg, generator=gens, output_type="np"
        ).images
        out.append((images * 255).round().astype(np.uint8))
    return np.concatenate(out)


def attribute_prompts(n: int, templates: list[str]) -> tuple[list[str], list[tuple]]:
    """``n`` prompts cycling through every (color, shape, texture) in a seeded order."""
    order = np.random.default_rng(7).permutation(len(COMBOS))
    attrs = [COMBOS[order[i % len(COMBOS)]] for i in range(n)]
    prompts = [tw.caption_for(templates[i % len(templates)], *a) for i, a in enumerate(attrs)]
    return prompts, attrs


def accuracy(images: np.ndarray, attrs: list[tuple]) -> dict[str, float]:
    found = [tw.detect(img) for img in images]
    acc = {
        k: np.mean([f[k] == a[i] for f, a in zip(found, attrs, strict=True)])
        for i, k in enumerate(tw.ATTRIBUTES)
    }
    acc["all"] = np.mean(
        [tuple(f[k] for k in tw.ATTRIBUTES) == a for f, a in zip(found, attrs, strict=True)]
    )
    return {k: float(v) for k, v in acc.items()}


class Scorer:
    """The CLIP scorer, loaded exactly as a user would load it."""

    def __init__(self, path: str):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(path).eval()
        self.processor = CLIPProcessor.from_pretrained(path)

    @torch.no_grad()
    def logits(self, images: np.ndarray, captions: list[str]) -> np.ndarray:
        """(n_images, n_captions) image-text logits."""
        inputs = self.processor(
            text=captions, images=list(images), return_tensors="pt", padding=True
        )
        return self.model(**inputs).logits_per_image.numpy()

    def top1(self, images: np.ndarray, captions: list[str], truth: list[int]) -> float:
        return float(np.mean(self.logits(images, captions).argmax(1) == np.asarray(truth)))


def scorer_sanity(scorer: Scorer, n: int = 288, seed: int = 2024) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    truth = [i % len(COMBOS) for i in range(n)]
    images = np.stack([tw.render(*COMBOS[i], rng) for i in truth])
    result, logits = {}, {}
    for name, template in (("train", FULL_TEMPLATES[0]), ("held-out", tw.HELD_OUT_TEMPLATES[0])):
        logits[name] = scorer.logits(images, [tw.caption_for(template, *a) for a in COMBOS])
        result[f"{len(COMBOS)}-way, {name} template"] = float(
            np.mean(logits[name].argmax(1) == truth)
        )
    for k, name in enumerate(tw.ATTRIBUTES):  # vary one attribute, keep the others right
        hits = []
        for row, i in zip(logits["train"], truth, strict=True):
            options = [
                j
                for j, a in enumerate(COMBOS)
                if all(a[m] == COMBOS[i][m] for m in range(len(a)) if m != k)
            ]
            hits.append(options[int(np.argmax(row[options]))] == i)
        result[f"{len(options)}-way {name}"] = float(np.mean(hits))
    facts = list(tw.FACTS)
    fact_imgs = np.stack([tw.render(*tw.FACTS[facts[i % 2]], rng) for i in range(64)])
    result["2-way fact name"] = scorer.top1(fact_imgs, facts, [i % 2 for i in range(64)])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", choices=list(WORLDS), default="toy")
    parser.add_argument("--model", help="the pipeline folder (default: the world's)")
    parser.add_argument("--scorer", help="the CLIP scorer folder (default: the world's)")
    parser.add_argument("--n", type=int, default=96, help="images per attribute test")
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--grid", help="write a PNG grid of the first generated images here")
    args = parser.parse_args(argv)
    use_world(args.world)
    args.model = args.model or WORLDS[args.world][1]
    args.scorer = args.scorer or WORLDS[args.world][2]
    torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline

    t0 = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    scorer = Scorer(args.scorer)
    results: dict[str, dict[str, float]] = {}

    prompts, attrs = attribute_prompts(args.n, FULL_TEMPLATES)
    images = generate(pipe, prompts, SEED0, args.cfg)
    results["train templates"] = accuracy(images, attrs)
    truth = [COMBOS.index(a) for a in attrs]
    caps72 = [tw.caption_for(FULL_TEMPLATES[0], *a) for a in COMBOS]
    results["train templates"]["scorer N-way"] = scorer.top1(images, caps72, truth)
    if args.grid:
        save_grid(images[:48], args.grid)

    held, _ = attribute_prompts(args.n, list(tw.HELD_OUT_TEMPLATES))
    results["held-out template"] = accuracy(generate(pipe, held, SEED0 + 1000, args.cfg), attrs)

    for name, templates, seed in (
        ("facts", tw.FACT_TEMPLATES, 2000),
        ("facts, held-out template", tw.HELD_OUT_FACT_TEMPLATES, 3000),
    ):
        fact_prompts, fact_attrs = [], []
        for i in range(32):
            fact = list(tw.FACTS)[i % 2]
            fact_prompts.append(templates[(i // 2) % len(templates)].format(fact=fact))
            fact_attrs.append(tw.FACTS[fact])
        imgs = generate(pipe, fact_prompts, SEED0 + seed, args.cfg)
        results[name] = accuracy(imgs, fact_attrs)
    results["scorer on ground truth"] = scorer_sanity(scorer)
    results["seconds"] = {"eval": round(time.time() - t0)}
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table of the prompt-following results and a list of the scorer checks."""
    cols = [*tw.ATTRIBUTES, "all", "scorer N-way"]
    lines = ["| prompts | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in ("train templates", "held-out template", "facts", "facts, held-out template"):
        row = results[name]
        cells = [f"{row[c]:.3f}" if c in row else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| scorer on ground-truth renders | top-1 |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in results["scorer on ground truth"].items()]
    return "\n".join(lines)


def save_grid(images: np.ndarray, path: str, cols: int = 8) -> None:
    from PIL import Image

    rows = -(-len(images) // cols)
    grid = np.full((rows * 34, cols * 34, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * 34 : r * 34 + 32, c * 34 : c * 34 + 32] = img
    Image.fromarray(grid).resize((cols * 68, rows * 68), Image.NEAREST).save(path)


if __name__ == "__main__":
    main()
