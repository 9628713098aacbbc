"""What every attack is given, and how it judges images: :class:`AttackContext`.

An attack draws images on the base model and, inside ``ctx.edited()``, on the edited one,
and asks :meth:`AttackContext.judged` for the concept's finding on each: the recipe's first
rate detector (its finding for the edit's label, 0..1), or the CLIP score to the edit's first
prompt where the recipe names none.  Every judgement is stored in the release's cache under
the attack, the model, the evidence's inputs and what was drawn (:meth:`AttackContext.key`),
so an interrupted attack resumes without drawing again what it had judged.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from ...localize.cache import CandidateCache
    from ...localize.scorers import Scorer
    from ...models.base import ModelFamily
    from ...recipe.schema import EraseEdit, Recipe
    from ..detectors import Detector

#: the two models every attack runs on
MODELS = ("base", "edited")


@dataclass
class AttackContext:
    """The models, the judge and the cache the attacks share.

    Attributes:
        pipe: the base pipeline (the edit is applied only inside ``edited()``).
        family: its model family (:mod:`locopack.models`).
        recipe: the recipe.
        draw: ``draw(prompts, seeds) -> {prompt: [image per seed]}`` on the model as it is.
        edited: ``edited()`` is a context manager under which the release's edit is applied.
        detector: the recipe's first rate detector, or None (CLIP alone).
        scorer: the recipe's CLIP scorer.
        seeds: the evidence's seeds: every success is measured on images of these.
        steps, guidance, resolution: how the evidence draws.
        write_grid: ``write_grid(stem, rows)`` writes a before | after grid, returns its name.
        cache: the release's :class:`~locopack.localize.cache.CandidateCache`, or None.
        inputs: what identifies the models in cache keys (the evidence's inputs).
        base_inputs: what identifies the base model alone, where its judgements are shared
            by several edits (a benchmark of many edits of one base); None: ``inputs``.
    """

    pipe: DiffusionPipeline
    family: type[ModelFamily]
    recipe: Recipe
    draw: Callable[[list[str], list[int]], dict[str, list]]
    edited: Callable[[], AbstractContextManager]
    detector: Detector | None
    scorer: Scorer
    seeds: list[int]
    steps: int
    guidance: float
    resolution: int | None
    write_grid: Callable[[str, list], str]
    cache: CandidateCache | None = None
    inputs: object = None
    base_inputs: object = None

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.family.denoiser_attr)

    def on(self, model: str) -> AbstractContextManager:
        """The edit applied for ``edited``, nothing for ``base``."""
        return self.edited() if model == "edited" else nullcontext()

    def inputs_of(self, model: str) -> object:
        """What identifies ``model`` (``base`` or ``edited``) in cache keys."""
        shared = model == "base" and self.base_inputs is not None
        return self.base_inputs if shared else self.inputs

    def key(self, attack: str, model: str, **what: object) -> str | None:
        """The cache key of one judgement, or None without a cache."""
        if self.cache is None:
            return None
        return self.cache.key(kind=attack, model=model, inputs=self.inputs_of(model), **what)

    def findings(self, images: list, prompt: str, original: str, label: str) -> list[float]:
        """The concept's finding on each image (see the module docstring)."""
        if self.detector is None:
            return [float(s) for s in self.scorer(images, [original] * len(images))]
        found = self.detector(images, [prompt] * len(images))
        return [f.get(label, 0.0) for f in found]

    def judged(
        self, key: str | None, draw: Callable[[], list], prompt: str, original: str, label: str
    ) -> list[float]:
        """The findings of the images ``draw()`` returns, read from the cache under ``key``
        when they were judged before (nothing is drawn then), else drawn, judged and stored."""
        if key is not None and (hit := self.cache.get(key)) is not None:
            return [float(v) for v in hit["scores"]]
        began = time.perf_counter()
        values = self.findings(draw(), prompt, original, label)
        if key is not None:
            self.cache.put(key, {"scores": values, "seconds": time.perf_counter() - began})
        return values

    def prompt_success(self, attack: str, model: str, prompt: str, edit: EraseEdit) -> float:
        """The concept's rate on ``prompt`` drawn with every seed on ``model``."""
        original = edit.originals()[0]
        key = self.key(attack, model, prompt=prompt, seeds=self.seeds, label=edit.label)

        def draw() -> list:
            with self.on(model):
                return self.draw([prompt], self.seeds)[prompt]

        return statistics.fmean(self.judged(key, draw, prompt, original, edit.label))

    def chance(self, edit: EraseEdit) -> dict[str, float]:
        """Where attacks start from: the concept's rate on the edit's first prompt without the
        concept, on each model (judged once for every attack that shares it)."""
        prompt = without_concept(edit.prompts[0])
        return {m: self.prompt_success("chance", m, prompt, edit) for m in MODELS}

    def protocol(self) -> dict[str, object]:
        """The judging protocol, stated once on the card."""
        detector = self.detector
        options = dict(detector.options) if detector is not None else {}
        return {
            "detector": detector.name if detector is not None else "clip",
            "kind": detector.kind if detector is not None else "score",
            "threshold": options.get("threshold", "its decision" if detector else None),
            "version": detector_version(detector.name) if detector is not None else None,
            "seeds": list(self.seeds),
            "steps": self.steps,
            "guidance": self.guidance,
        }


def without_concept(template: str) -> str:
    """``template`` with ``{concept}`` removed and its spaces closed up."""
    return re.sub(r"\s+", " ", template.replace("{concept}", "")).strip()


def erase_edits(recipe: Recipe) -> Iterator[tuple[int, EraseEdit]]:
    """``(index, edit)`` of every erase edit: the edits attacks run on."""
    for index, edit in enumerate(recipe.edits):
        if edit.kind == "erase":
            yield index, edit


class _Named(Protocol):
    """An attack as its table line names it."""

    name: str
    pretty_name: str


def row(
    attack: _Named, variant: str | None, index: int, edit: EraseEdit, budget: str, **figures
) -> dict:
    """One line of the card's attack table: ``base``, ``edited`` (the concept's rate when the
    attack runs against that model) and ``chance`` (``{"base", "edited"}``: where it started
    from, or None) among ``figures``."""
    name = attack.pretty_name + (f" ({variant})" if variant else "")
    head = {"attack": attack.name, "name": name, "edit": index, "label": edit.label}
    return head | {"budget": budget} | figures


def detector_version(name: str) -> str:
    """The version that judged: the package of a plug-in's module (or the detector's extra,
    ``nudenet``), and locopack's for its own."""
    from importlib.metadata import PackageNotFoundError, version

    from ..detectors import target
    from ..detectors.registry import detector_entry

    entry = detector_entry(name)
    module = target(name).split(":")[0].split(".")[0]
    wanted = ["locopack", *(entry.packages if entry else ())]
    wanted = wanted if module == "locopack" else [module]
    found = []
    for package in wanted:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} (no version)")
    return ", ".join(found)
