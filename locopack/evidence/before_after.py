"""Before/after evidence: fixed-seed images, CLIP scores and detectors, base vs edited model.

For every edit, four prompt sets are drawn twice with the same seeds, once by the base model
and once with the released adapter loaded the way a user loads it (``locopack.apply``, i.e.
diffusers' ``load_lora_weights``; PEFT for PixArt), never the in-memory delta:

- ``edited``: the edit's prompts (what the edit was computed from);
- ``held_out``: its held-out paraphrases (not used by the edit);
- ``preserve``: its and the recipe's preserve prompts;
- ``unrelated``: the recipe's ``evidence.unrelated`` prompts, or a few fixed ones, and those
  ``evidence.sample_unrelated`` draws (:mod:`locopack.prompt_samples`: prompts the recipe
  never lists, so the edit never saw them).

Each prompt is drawn with every seed of ``evidence.seeds``.  Each image is scored with CLIP
against its own prompt ("original") and against the edit's target ("target"; for preserve and
unrelated prompts the target is the prompt itself; a held-out prompt has one only where the
edit's prompts share theirs), averaged over the seeds; each detector of ``evidence.detectors``
(:mod:`locopack.evidence.detectors`) gives a set's rates before and after (the concept, the prompt,
the target); and every prompt's before/after change (SSIM, PSNR: :mod:`.specificity`), with
the preserve and unrelated prompts that changed too much flagged.  The attacks
(:mod:`locopack.evidence.attacks`: the word search of :mod:`.attack` within ``evidence.attack``'s
budget, and those ``evidence.attacks`` turns on) run in this stage too, so that their results are
reused with the rest: their table under ``attacks``, the word search's record under
``attack``; an erase edit an attack cannot run on is recorded under its ``skipped`` with why,
never a failed build.  Results go to ``evidence.json``; each set's
before | after grid (first seed), each flagged set's grid of every seed, the attack's grids and
the summary chart (:mod:`.charts`) to ``evidence/``.

``evidence.json`` also records its ``inputs`` (:func:`evidence_inputs`: the recipe's hash, the
base's fingerprint, the hashes of the delta and of the adapter's tensors, the scorer), so that
a rerun of the build reuses complete evidence for the same inputs (:func:`reusable_evidence`)
instead of drawing it again, as the sweep's cache does for its windows.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image, ImageDraw

from ..errors import LocopackError
from ..fingerprint import tensors_sha256
from ..localize.cache import CandidateCache
from ..prompt_samples import sampled_unrelated
from ..record import JsonObject
from ..release.layout import ADAPTER_FILE, CACHE_DIR, EVIDENCE_DIR, EVIDENCE_FILE
from ..release.records.evidence import EvidenceRecord
from ..storage import atomic_write_bytes, load_tensors
from .attacks import AttackContext, run_all
from .charts import SUMMARY_CHART, summary_png
from .detectors import load_detector, rates
from .specificity import CHECKED_SETS, flag_set, prompt_changes
from .verdict import judge

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..delta import WeightDelta
    from ..models.loaded import LoadedBase
    from ..recipe.schema import Recipe

UNRELATED = ("a photo of a dog", "a red car on a street", "a mountain river")
FORMAT = "locopack.evidence/1"


def prompt_sets(recipe: Recipe) -> list[dict[str, Any]]:
    """For each edit, the prompt sets and each prompt's target."""
    common = list(recipe.preserve)
    unrelated = list(recipe.evidence.unrelated or UNRELATED) + sampled_unrelated(recipe)
    out = []
    for index, edit in enumerate(recipe.edits):
        targets = edit.targets_expanded()
        shared = targets[0] if len(set(targets)) == 1 else None
        sets = {
            "edited": list(zip(edit.originals(), targets, strict=True)),
            # a held-out prompt has a target only where the edit's prompts share one
            "held_out": [(p, shared or p) for p in edit.expanded_held_out()],
            "preserve": [(p, p) for p in dict.fromkeys(list(edit.preserve) + common)],
            "unrelated": [(p, p) for p in unrelated],
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


def evidence_inputs(
    recipe: Recipe, fingerprint: str, delta: WeightDelta, release: Path
) -> JsonObject:
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


def reusable_evidence(release: Path, inputs: JsonObject) -> JsonObject | None:
    """The evidence already in ``release`` when it was drawn from ``inputs`` and every image
    it names is there; else None (it is then drawn again)."""
    try:
        found = EvidenceRecord.read(release / EVIDENCE_FILE)
        images = [g for e in found.edits for s in e.sets.values() for g in _grids(s)]
        images += [g.image for g in found.gallery] + [found.summary_chart]
        images += [a["grid"] for a in (found.attack or {"edits": []})["edits"]]
    except (LocopackError, TypeError, KeyError):
        return None
    complete = all(isinstance(i, str) and (release / i).is_file() for i in images)
    # evidence older than the requirements or the attack table: redrawn
    complete = complete and found.requirements is not None and found.attacks is not None
    same = found.inputs is not None and found.inputs.to_json() == inputs
    return found.to_json() if complete and same else None


@contextmanager
def _edited(pipe: DiffusionPipeline, release: Path) -> Iterator[Any]:
    """The release's edit applied to ``pipe`` as a user applies it, removed on exit."""
    from ..hub.apply import apply

    applied = apply(pipe, release)
    try:
        yield applied
    finally:
        applied.remove()


def check_detectors(recipe: Recipe) -> None:
    """Load every detector the recipe names (``clip`` without its scorer), so that a missing
    module or extra fails before the build's expensive stages.

    Raises:
        RecipeError: a detector cannot be loaded.
    """
    for spec in recipe.evidence.detectors:
        load_detector(spec.name, spec.options)


def _grids(item: JsonObject) -> list[str]:
    """The image files a set's evidence names."""
    return [item["grid"]] + ([item["flagged_grid"]] if item.get("flagged_grid") else [])


#: images drawn in one call of the pipeline (several prompts' seeds): batched, a small model
#: draws each image several times faster than alone
BATCH = 8


def generate_images(
    base: LoadedBase,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    resolution: int | None,
) -> dict[str, list[Image.Image]]:
    """Every prompt drawn by ``base`` with every seed: {prompt: [image per seed]}; the seeds
    of several prompts share a call (prompt-major, as the pipeline orders a batch)."""
    pipe, family = base.pipe, base.family
    size = {"height": resolution, "width": resolution} if resolution else {}
    per_call = max(1, BATCH // len(seeds))
    images = {}
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start : start + per_call]
        generators = [torch.Generator(pipe.device).manual_seed(s) for _ in chunk for s in seeds]
        drawn = pipe(
            prompt=list(chunk),  # a copy: Z-Image's pipeline writes its chat template into the list
            num_images_per_prompt=len(seeds),
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            **size,
            **family.call_kwargs(),
        ).images
        for i, prompt in enumerate(chunk):
            images[prompt] = drawn[i * len(seeds) : (i + 1) * len(seeds)]
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
    base: LoadedBase,
    recipe: Recipe,
    release: Path,
    scorer: Any,
    out: Path,
    *,
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    inputs: JsonObject | None = None,
) -> JsonObject:
    """Generate, score and save the before/after evidence of the release in ``release``.

    ``base`` must be unedited; the adapter is applied to it and removed again here.
    ``inputs`` (see :func:`evidence_inputs`) is recorded, for a rerun to reuse the evidence.

    Returns:
        The content written to ``out/evidence.json``.
    """
    pipe, family, settings = base.pipe, base.family, recipe.localize
    seeds = [seed] if seed is not None else recipe.evidence.seeds or settings.seeds[:1]
    steps = steps or settings.steps
    guidance = settings.guidance if guidance is None else guidance
    detectors = [load_detector(d.name, d.options, scorer) for d in recipe.evidence.detectors]
    plan = prompt_sets(recipe)
    every = sorted({p for item in plan for pairs in item["sets"].values() for p, _ in pairs})

    def draw(prompts: list[str], seeds: list[int]) -> dict[str, list]:
        return generate_images(base, prompts, seeds, steps, guidance, settings.resolution)

    def write_grid(stem: str, rows: list) -> str:
        name = f"{EVIDENCE_DIR}/{stem}.png"
        atomic_write_bytes(out / name, grid(rows))
        return name

    before = draw(every, seeds)
    with _edited(pipe, release) as applied:
        after = draw(every, seeds)
    result = {
        "format": FORMAT,
        "seed": seeds[0],
        "seeds": seeds,
        "steps": steps,
        "guidance": guidance,
        "scorer": getattr(scorer, "name", type(scorer).__name__),
        "detectors": [d.name for d in detectors],
        "ssim_threshold": recipe.evidence.ssim_threshold,
        "applied": applied.kind,
        "inputs": inputs,
        "edits": [],
    }
    images = {"before": before, "after": after}
    for item in plan:
        entry = {k: item[k] for k in ("edit", "label", "kind", "success_score")} | {"sets": {}}
        for name, pairs in item["sets"].items():
            stem = f"edit{item['edit']}_{name}"
            measured = _measure(pairs, images, scorer, detectors, item["label"])
            first = [(p, before[p][0], after[p][0]) for p in measured["prompts"]]
            measured["grid"] = write_grid(stem, first)
            if name in CHECKED_SETS:
                threshold = recipe.evidence.ssim_threshold
                measured.update(flag_set(write_grid, stem, measured, images, threshold))
            entry["sets"][name] = measured
        result["edits"].append(entry)
    gallery = []
    for prompt in sorted({p for item in plan for p, _ in item["sets"].get("edited", [])}):
        name = f"{EVIDENCE_DIR}/after_{len(gallery)}.png"
        buffer = io.BytesIO()
        after[prompt][0].save(buffer, format="PNG")
        atomic_write_bytes(out / name, buffer.getvalue())
        gallery.append({"prompt": prompt, "image": name})
    result["gallery"] = gallery
    rate = next((d for d in detectors if d.kind == "rate"), None)
    context = AttackContext(
        pipe, family, recipe, draw, lambda: _edited(pipe, release), rate, scorer, seeds,
        steps, guidance, settings.resolution, write_grid,
        cache=CandidateCache(out / CACHE_DIR) if inputs is not None else None,
        inputs={"evidence": inputs, "steps": steps, "guidance": guidance},
    )  # fmt: skip
    result["attacks"], runs = run_all(context)
    result["attack"] = runs["word_search"].record if "word_search" in runs else None
    result["requirements"] = judge(recipe, result)
    atomic_write_bytes(out / SUMMARY_CHART, summary_png(result))
    result["summary_chart"] = SUMMARY_CHART
    EvidenceRecord.parse(result, "the evidence").write(out / EVIDENCE_FILE)
    return result


def _measure(pairs, images, scorer, detectors, label: str) -> dict[str, Any]:
    """One prompt set's CLIP scores (per prompt, mean over the seeds), detector rates and
    before/after image change."""
    prompts = [p for p, _ in pairs]
    targets = [t for _, t in pairs]
    n = len(images["before"][prompts[0]])
    per_image = {"original": [p for p in prompts for _ in range(n)]}
    per_image["target"] = [t for t in targets for _ in range(n)]
    scores, found = {}, {}
    for when, drawn in images.items():
        shots = [image for p in prompts for image in drawn[p]]
        scores[when] = {}
        for key, texts in per_image.items():
            flat = scorer(shots, texts)
            scores[when][key] = [statistics.fmean(flat[i : i + n]) for i in range(0, len(flat), n)]
        for detector in detectors:
            seen = rates(detector(shots, per_image["original"]), label)
            target = rates(detector(shots, per_image["target"]), label).get("prompt")
            if targets != prompts and target is not None:
                seen["target"] = target
            found.setdefault(detector.name, {"kind": detector.kind})[when] = seen
    return {
        "prompts": prompts,
        "targets": targets,
        "scores": scores,
        "summary": {when: {k: _summary(v) for k, v in s.items()} for when, s in scores.items()},
        "detectors": found,
        "change": prompt_changes(prompts, images["before"], images["after"]),
    }
