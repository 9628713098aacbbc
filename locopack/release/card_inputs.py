"""What the model card is built from: the recipe and the records the stages wrote.

:func:`read_inputs` is the one place the card reads a release's files (and
:func:`recorded_allow_unmet` its history); the card's other modules take what it returns.
Each record is read and checked through its typed model (:mod:`locopack.release.records`,
:mod:`locopack.export.records`, :mod:`locopack.localize.result`), then handed to the card as
its JSON data: the card shows values, and its sections read them by the names the files use.
"""

from __future__ import annotations

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
    RECIPE_FILE,
    release_recipe,
)

if TYPE_CHECKING:
    from ..delta_record import DeltaProvenance
    from ..export.registry import ExportFormat
    from ..recipe.schema import Recipe


@dataclass(frozen=True)
class CardInputs:
    """What the card is built from: the recipe and the records the stages wrote."""

    recipe: Recipe
    edit: dict
    evidence: dict
    manifest: dict
    localization: dict | None
    #: the delta's provenance as its record reads it (where the base is, …)
    provenance: DeltaProvenance
    #: the export formats whose files the release holds
    formats: list[ExportFormat]

    @property
    def whole_model(self) -> bool:
        """Whether the release holds a whole model (the merged checkpoint), not only an adapter."""
        return any(fmt.whole_model for fmt in self.formats)


def read_inputs(folder: Path, known: Recipe | None = None) -> CardInputs:
    """The card's inputs from the release in ``folder`` (``known``: its recipe, already read);
    raises ExportError naming a file that is missing, or one the card refers to (an image, the
    adapter) that is not there."""
    from ..export.formats import export_formats

    if not (folder / RECIPE_FILE).is_file():
        raise ExportError(f"{folder}: {RECIPE_FILE} is missing; is this a locopack output folder?")
    recipe = release_recipe(folder, known)
    from ..export.records import LoraManifest
    from ..localize.result import LocalizationResult
    from .records.edit import EditRecord
    from .records.evidence import EvidenceRecord

    edit = EditRecord.read(_required(folder, EDIT_FILE, "the edited layers and edit quality"))
    evidence = EvidenceRecord.read(_required(folder, EVIDENCE_FILE, "the before/after evidence"))
    manifest = LoraManifest.read(_required(folder, MANIFEST_FILE, "the adapter's ranks"))
    localization = None
    if (folder / LOCALIZATION_FILE).is_file():
        localization = LocalizationResult.load(folder / LOCALIZATION_FILE).to_dict()
    referenced = card_images(evidence.to_json())
    referenced += [g.image for g in evidence.gallery]
    referenced += [DELTA_FILE, ADAPTER_FILE]
    referenced += [LOCALIZATION_PLOT] if localization else []
    for name in referenced:
        if not (folder / name).is_file():
            raise ExportError(f"{folder}: {name} is missing but the card refers to it")
    formats = [fmt for fmt in export_formats() if fmt.present_in(folder)]
    records = (edit.to_json(), evidence.to_json(), manifest.to_json())
    return CardInputs(recipe, *records, localization, manifest.provenance, formats)


def _required(folder: Path, name: str, needed_for: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise ExportError(
            f"{folder}: {name} is missing ({needed_for}); re-run the stage "
            "that writes it before building the card"
        )
    return path


def recorded_allow_unmet(folder: Path) -> bool:
    """Whether the history's last entry says the release was built with ``--allow-unmet``."""
    from .history import read_history

    try:
        entries = read_history(folder / HISTORY_FILE)
    except LocopackError:
        return False
    return bool(entries and entries[-1].requirements and entries[-1].requirements.allowed_unmet)
