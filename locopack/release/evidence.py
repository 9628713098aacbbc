"""Before/after evidence: fixed-seed images and CLIP scores, base model vs edited model.

For every edit, four prompt sets are drawn twice with the same seeds, once by the base model
and once with the released adapter loaded the way a user loads it (``locopack.apply``, i.e.
diffusers' ``load_lora_weights``; PEFT for PixArt), never the in-memory delta:

- ``edited``: the edit's prompts (what the edit was computed from);
- ``held_out``: its held-out paraphrases (not used by the edit);
- ``preserve``: its and the recipe's preserve prompts;
- ``unrelated``: a few fixed prompts about other things.

Each image is scored with CLIP against its own prompt ("original") and against the edit's
target ("target"; for preserve and unrelated prompts the target is the prompt itself).
Results go to ``evidence.json``; each set's before | after grid to ``evidence/``.

``evidence.json`` also records its ``inputs`` (:func:`evidence_inputs`: the recipe's hash, the
base's fingerprint, the hashes of the delta and of the adapter's tensors, the scorer), so that
a rerun of the build reuses complete evidence for the same inputs (:func:`reusable_evidence`)
instead of drawing it again, as the sweep's cache does for its windows.
"""

from __future__ import annotations

import io
import json
import statistics
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from ..fingerprint import tensors_sha256
from ..storage import atomic_write_bytes, atomic_write_text, load_tensors
from .layout import ADAPTER_FILE, EVIDENCE_DIR, EVIDENCE_FILE

UNRELATED = ("a photo of a dog", "a red car on a street", "a mountain river")
FORMAT = "locopack.evidence/1"


def prompt_sets(recipe: Any) -> list[dict[str, Any]]:
    """For each edit, the prompt sets and each prompt's target."""
    common = list(recipe.preserve)
    out = []
    for index, edit in enumerate(recipe.edits):
        targets = edit.targets_expanded()
        sets = {
            "edited": list(zip(edit.originals(), targets, strict=True)),
            "held_out": [(p, targets[0]) for p in edit.expanded_held_out()],
            "preserve": [(p, p) for p in dict.fromkeys(list(edit.preserve) + common)],
            "unrelated": [(p, p) for p in UNRELATED],
        }
        out.append(
            {
                "edit": index,
                "label": edit.label,
                "kind": edit.kind,
                "success_score": list(edit.success_score),
                "sets": {k: v for k, v in sets.items() if v},
            }
        )
    return out


def evidence_inputs(recipe: Any, fingerprint: str, delta: Any, release: Path) -> dict[str, Any]:
    """Everything the evidence of the release in ``release`` depends on: the recipe (prompts,
    seeds, settings, scorer name), the base (``fingerprint``), the delta and the adapter that
    is applied (its tensors: the file's header order may vary between writes)."""
    adapter = release / ADAPTER_FILE
    return {
        "format": FORMAT,
        "recipe_sha256": recipe.sha256,
        "base_fingerprint": fingerprint,
        "delta_sha256": delta.sha256(),
        "adapter_sha256": tensors_sha256(load_tensors(adapter)[0]) if adapter.is_file() else None,
    }


def reusable_evidence(release: Path, inputs: dict[str, Any]) -> dict[str, Any] | None:
    """The evidence already in ``release`` when it was drawn from ``inputs`` and every image
    it names is there; else None (it is then drawn again)."""
    try:
        found = json.loads((release / EVIDENCE_FILE).read_text(encoding="utf-8"))
        images = [s["grid"] for e in found["edits"] for s in e["sets"].values()]
        images += [g["image"] for g in found["gallery"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    complete = all(isinstance(i, str) and (release / i).is_file() for i in images)
    return found if complete and found.get("inputs") == inputs else None


def _generate(pipe, family, prompts, seed, steps, guidance, resolution) -> list[Image.Image]:
    size = {"height": resolution, "width": resolution} if resolution else {}
    images = []
    for prompt in prompts:
        generator = torch.Generator(pipe.device).manual_seed(seed)
        images += pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            **size,
            **family.call_kwargs(),
        ).images
    return images


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
    }


def grid(rows: list[tuple[str, Image.Image, Image.Image]], cell: int = 128) -> bytes:
    """PNG bytes of a before | after grid with one row per prompt."""
    label_h = 14
    image = Image.new("RGB", (2 * cell, (cell + label_h) * len(rows) + label_h), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 1), "before", fill="black")
    draw.text((cell + 4, 1), "after", fill="black")
    for i, (prompt, before, after) in enumerate(rows):
        top = label_h + i * (cell + label_h)
        draw.text((4, top), prompt[:40], fill="black")
        image.paste(before.convert("RGB").resize((cell, cell), Image.NEAREST), (0, top + label_h))
        image.paste(after.convert("RGB").resize((cell, cell), Image.NEAREST), (cell, top + label_h))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@torch.no_grad()
def collect_evidence(
    pipe: Any,
    family: Any,
    recipe: Any,
    release: Path,
    scorer: Any,
    out: Path,
    *,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    inputs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate, score and save the before/after evidence of the release in ``release``.

    ``pipe`` must be the unedited base; the adapter is applied and removed again here.
    ``inputs`` (see :func:`evidence_inputs`) is recorded, for a rerun to reuse the evidence.

    Returns:
        The content written to ``out/evidence.json``.
    """
    from .inference import apply

    settings = recipe.localize
    seed = settings.seeds[0] if seed is None else seed
    steps = steps or settings.steps
    guidance = settings.guidance if guidance is None else guidance
    plan = prompt_sets(recipe)
    every = sorted({p for item in plan for pairs in item["sets"].values() for p, _ in pairs})
    args = (seed, steps, guidance, settings.resolution)
    before = dict(zip(every, _generate(pipe, family, every, *args), strict=True))
    applied = apply(pipe, release)
    try:
        after = dict(zip(every, _generate(pipe, family, every, *args), strict=True))
    finally:
        applied.remove()
    result = {
        "format": FORMAT,
        "seed": seed,
        "steps": steps,
        "guidance": guidance,
        "scorer": getattr(scorer, "name", type(scorer).__name__),
        "applied": applied.kind,
        "inputs": inputs,
        "edits": [],
    }
    for item in plan:
        entry = {k: item[k] for k in ("edit", "label", "kind", "success_score")} | {"sets": {}}
        for name, pairs in item["sets"].items():
            prompts = [p for p, _ in pairs]
            targets = [t for _, t in pairs]
            scores = {}
            for when, images in (("before", before), ("after", after)):
                shots = [images[p] for p in prompts]
                scores[when] = {
                    "original": scorer(shots, prompts),
                    "target": scorer(shots, targets),
                }
            image_name = f"{EVIDENCE_DIR}/edit{item['edit']}_{name}.png"
            atomic_write_bytes(out / image_name, grid([(p, before[p], after[p]) for p in prompts]))
            entry["sets"][name] = {
                "prompts": prompts,
                "targets": targets,
                "grid": image_name,
                "scores": scores,
                "summary": {
                    when: {k: _summary(v) for k, v in s.items()} for when, s in scores.items()
                },
            }
        result["edits"].append(entry)
    gallery = []
    for prompt in sorted({p for item in plan for p, _ in item["sets"].get("edited", [])}):
        name = f"{EVIDENCE_DIR}/after_{len(gallery)}.png"
        buffer = io.BytesIO()
        after[prompt].save(buffer, format="PNG")
        atomic_write_bytes(out / name, buffer.getvalue())
        gallery.append({"prompt": prompt, "image": name})
    result["gallery"] = gallery
    atomic_write_text(out / EVIDENCE_FILE, json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result
