"""What the model card is built from: the recipe and the records the stages wrote.

:func:`read_inputs` is the one place the card reads a release's files (and
:func:`recorded_allow_unmet` its history); the card's other modules take what it returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExportError, LocopackError
from .card_sections import card_images
from .layout import (
    ADAPTER_FILE,
    DELTA_FILE,
    EDIT_FILE,
    EVIDENCE_FILE,
    HISTORY_FILE,
    LOCALIZATION_FILE,
    LOCALIZATION_PLOT,
    MANIFEST_FILE,
    MERGED_DIR,
    PIPELINE_INDEX,
    RECIPE_FILE,
)

if TYPE_CHECKING:
    from ..recipe.schema import Recipe


@dataclass(frozen=True)
class CardInputs:
    """What the card is built from: the recipe and the records the stages wrote."""

    recipe: Recipe
    edit: dict
    evidence: dict
    manifest: dict
    localization: dict | None
    merged: bool


def read_inputs(folder: Path) -> CardInputs:
    """The card's inputs from the release in ``folder``; raises ExportError naming a file that
    is missing, or one the card refers to (an image, the adapter) that is not there."""
    from ..recipe.schema import load_recipe

    if not (folder / RECIPE_FILE).is_file():
        raise ExportError(f"{folder}: {RECIPE_FILE} is missing; is this a locopack output folder?")
    recipe = load_recipe(folder / RECIPE_FILE)
    edit = _read_json(folder, EDIT_FILE, "the edited layers and edit quality")
    evidence = _read_json(folder, EVIDENCE_FILE, "the before/after evidence")
    manifest = _read_json(folder, MANIFEST_FILE, "the adapter's ranks")
    localization = None
    if (folder / LOCALIZATION_FILE).is_file():
        localization = _read_json(folder, LOCALIZATION_FILE, "the localization scores")
    referenced = card_images(evidence)
    referenced += [g["image"] for g in evidence.get("gallery", [])]
    referenced += [DELTA_FILE, ADAPTER_FILE]
    referenced += [LOCALIZATION_PLOT] if localization else []
    for name in referenced:
        if not (folder / name).is_file():
            raise ExportError(f"{folder}: {name} is missing but the card refers to it")
    merged = (folder / MERGED_DIR / PIPELINE_INDEX).is_file()
    return CardInputs(recipe, edit, evidence, manifest, localization, merged)


def _read_json(folder: Path, name: str, needed_for: str) -> dict:
    path = folder / name
    if not path.is_file():
        raise ExportError(
            f"{folder}: {name} is missing ({needed_for}); re-run the stage "
            "that writes it before building the card"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from None


def recorded_allow_unmet(folder: Path) -> bool:
    """Whether the history's last entry says the release was built with ``--allow-unmet``."""
    from .history import read_history

    try:
        entries = read_history(folder / HISTORY_FILE)
    except LocopackError:
        return False
    return bool(entries and entries[-1].get("requirements", {}).get("allowed_unmet"))
