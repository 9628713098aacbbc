"""Detectors: what the evidence asks of each generated image, beyond CLIP agreement.

A detector is a callable ``detector(images, prompts, **options) -> findings``: for each PIL
image (and the prompt it was drawn from) a ``{name: value}`` mapping.  Decisions are 0.0 / 1.0
and scores lie in [0, 1]; the evidence averages them into rates.  Two names are read:

- the edit's label (``stripes``, ``triangle``, ``the emblem of veridia``, ``nudity``...): the
  concept seen in the image;
- ``prompt``: how much of what the prompt asks the image shows (1.0: all of it).

A recipe's ``evidence.detectors`` names them: a built-in name (:data:`BUILT_IN`) or
``module:callable`` for the user's own (imported like any Python module, so only name code you
trust), each with keyword ``options``.  Built in:

- ``clip``: the recipe's CLIP scorer, ``prompt`` = its score to the prompt (100·cos; a
  ``score`` detector, averaged but not a rate);
- ``toy``: the toy world's pixel-statistics detectors (:mod:`.toy`);
- ``nudenet``: NudeNet's exposed-class detector (:mod:`.nudity`, the ``nudenet`` extra).
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import RecipeError

#: built-in detectors: name -> "module:callable" (``clip`` is bound to the recipe's scorer)
BUILT_IN = {
    "clip": "locopack.detectors:clip_detector",
    "toy": "locopack.detectors.toy:toy_detector",
    "toy-deep": "locopack.detectors.toy_deep:toy_deep_detector",
    "nudenet": "locopack.detectors.nudity:nudenet_detector",
}


def clip_detector(images, prompts, *, scorer) -> list[dict[str, float]]:
    """The CLIP score (100·cos) of each image to its prompt, as ``prompt``."""
    return [{"prompt": float(s)} for s in scorer(list(images), list(prompts))]


clip_detector.kind = "score"


@dataclass
class Detector:
    """A named detector with its options; calling it checks what it returns."""

    name: str
    function: Callable[..., Any]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``rate`` (values in [0, 1], shown as percentages) or ``score``."""
        return getattr(self.function, "kind", "rate")

    def __call__(self, images: list, prompts: list[str]) -> list[dict[str, float]]:
        found = self.function(images, prompts, **self.options)
        if not isinstance(found, list | tuple) or len(found) != len(images):
            raise RecipeError(
                f"detector {self.name}: expected one findings mapping per image "
                f"({len(images)}), found {type(found).__name__}"
            )
        return [{str(k): float(v) for k, v in dict(f).items()} for f in found]


def load_detector(name: str, options: dict[str, Any] | None = None, scorer: Any = None) -> Detector:
    """The detector a recipe names: a key of :data:`BUILT_IN` or ``module:callable``.

    Raises:
        RecipeError: the module cannot be imported (e.g. an extra is not installed) or holds
            no such callable.
    """
    where = f"evidence.detectors: {name}"
    module_name, _, attribute = BUILT_IN.get(name, name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        extra = f"; install it with pip install 'locopack[{name}]'" if name == "nudenet" else ""
        raise RecipeError(f"{where}: cannot import {module_name} ({err}){extra}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise RecipeError(f"{where}: {module_name} has no callable {attribute!r}")
    options = dict(options or {})
    if name == "clip":
        options["scorer"] = scorer
    return Detector(name, function, options)


def rates(findings: list[dict[str, float]], label: str) -> dict[str, float]:
    """Mean findings of a set of images: ``concept`` (the finding named ``label``, 0 where
    absent) and ``prompt`` (where every image has one)."""
    out = {"concept": statistics.fmean(f.get(label, 0.0) for f in findings)}
    if findings and all("prompt" in f for f in findings):
        out["prompt"] = statistics.fmean(f["prompt"] for f in findings)
    return out
