"""Prompts a recipe does not list: sampled from a vocabulary or a prompt file.

Two recipe settings draw them (:class:`~locopack.recipe.schema.PromptSample`):

- ``edit.neighbours``: prompts the edit keeps (added to the preserve prompts). An edit fitted
  on a handful of prompts is free to move every direction they do not pin down, and prompts
  nobody listed live in those directions: on the toy world (8 seeds, every site), the veridia
  fact update kept every attribute in 53% of twelve unlisted captions' images, and in 100%
  with twelve sampled neighbours (``scripts/bench_toy_world.py --no-neighbours`` compares).
- ``evidence.sample_unrelated``: prompts the evidence draws before and after, to measure
  specificity on prompts nobody listed.  They never include a neighbour, a preserve prompt or
  an edited prompt, so the figure is measured on prompts the edit never saw.

A source is ``toy`` (the toy world's captions, ``a {color} {shape} on a {texture}
background``: 72 of them), ``toy-deep`` (the deep toy world's, a size first: 144) or a text
file under the recipe's folder (or a folder the user allows, see
:mod:`locopack.recipe.files`), one prompt per line (blank lines and lines starting with ``#``
skipped).  A prompt that contains an edit's concept or fact is
never drawn (it is not unrelated, and keeping it would fight the edit).  Drawing is
deterministic: ``random.Random(seed).sample`` of the sorted candidates.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING

from .errors import RecipeError
from .recipe.files import prompt_file, read_regular

if TYPE_CHECKING:
    from .recipe.schema import PromptSample, Recipe

TOY_SOURCE = "toy"
#: the toy worlds' caption sources: name -> the detector module whose ``captions()`` they are
TOY_WORLDS = {TOY_SOURCE: "toy", "toy-deep": "toy_deep"}
#: the largest prompt file read (bytes)
MAX_FILE_BYTES = 4 * 1024 * 1024


def toy_captions(source: str = TOY_SOURCE) -> list[str]:
    """Every caption of a toy world's attribute template (``source``: a key of TOY_WORLDS)."""
    import importlib

    return importlib.import_module(f"locopack.evidence.detectors.{TOY_WORLDS[source]}").captions()


def source_prompts(recipe: Recipe, source: str, field: str) -> list[str]:
    """The candidate prompts of ``source`` (``toy`` or a file beside the recipe).

    Raises:
        RecipeError: the file cannot be read, is too large or is not UTF-8 text.
    """
    if source in TOY_WORLDS:
        return toy_captions(source)
    path = prompt_file(recipe.source, source, field)
    try:
        text = read_regular(path, MAX_FILE_BYTES, f"{recipe.source}: {field}").decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or "not UTF-8 text"
        raise RecipeError(
            f"{recipe.source}: {field}: expected {' or '.join(map(repr, TOY_WORLDS))} or a "
            "readable prompt file (one prompt per line, relative to the recipe), found "
            f"{source!r}: {reason}"
        ) from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def normalized(prompt: str) -> str:
    """``prompt`` lower-cased with its whitespace collapsed: how prompts are compared."""
    return " ".join(prompt.lower().split())


def names(prompt: str, concept: str) -> bool:
    """Whether ``prompt`` contains ``concept`` (case-insensitive), the rule of
    :meth:`~locopack.models.base.ModelFamily.concept_positions`."""
    return re.search(re.escape(concept.strip()), prompt, flags=re.IGNORECASE) is not None


def draw(recipe: Recipe, spec: PromptSample, exclude: list[str], field: str) -> list[str]:
    """``spec.count`` prompts of ``spec.source``, none of ``exclude`` and none containing an
    edit's concept or fact.

    Raises:
        RecipeError: the source has fewer such prompts than ``spec.count``.
    """
    banned = {normalized(p) for p in exclude}
    labels = [edit.label for edit in recipe.edits]
    candidates = sorted(
        {
            p
            for p in source_prompts(recipe, spec.source, field)
            if normalized(p) not in banned and not any(names(p, label) for label in labels)
        }
    )
    if len(candidates) < spec.count:
        raise RecipeError(
            f"{recipe.source}: {field}.count: expected at most {len(candidates)} (the prompts "
            f"of {spec.source!r} that name no edit's concept and no listed prompt), found "
            f"{spec.count}; lower the count or add prompts"
        )
    return random.Random(spec.seed).sample(candidates, spec.count)


def listed_prompts(recipe: Recipe) -> list[str]:
    """Every prompt the recipe lists: edited, targets, held-out, preserve and the evidence's
    unrelated prompts."""
    out = list(recipe.preserve) + list(recipe.evidence.unrelated or [])
    for edit in recipe.edits:
        out += edit.originals() + edit.targets_expanded() + edit.expanded_held_out()
        out += list(edit.preserve)
    return out


def neighbours(recipe: Recipe) -> list[str]:
    """The preserve prompts ``edit.neighbours`` adds ([] when it is not set)."""
    spec = recipe.edit.neighbours
    if spec is None:
        return []
    return draw(recipe, spec, listed_prompts(recipe), "edit.neighbours")


def sampled_unrelated(recipe: Recipe) -> list[str]:
    """The unrelated prompts ``evidence.sample_unrelated`` adds ([] when it is not set)."""
    spec = recipe.evidence.sample_unrelated
    if spec is None:
        return []
    taken = listed_prompts(recipe) + neighbours(recipe)
    return draw(recipe, spec, taken, "evidence.sample_unrelated")
