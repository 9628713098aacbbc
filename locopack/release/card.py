"""The model card: README.md of a release, built from what the earlier stages wrote.

The card is rendered from the Jinja template ``templates/model_card.md.j2`` (shipped in the
package) by huggingface_hub's ``ModelCard.from_template``: the template holds the card's layout
and prose, the functions here and in :mod:`.card_body`, :mod:`.card_sections`,
:mod:`.card_verdict`, :mod:`.card_signature` and :mod:`.robust_card` compute its values.

Metadata through ``ModelCardData``: ``base_model`` and its relation (``adapter`` for a LoRA
release, ``finetune`` when a whole model, the merged checkpoint, is released), ``library_name:
diffusers``, tags (each released export format adds its own),
the license inherited from the base where it is known, and a widget gallery of after images.
The body says what was edited and why, where (the localized layers and the localization plot),
how well and at what cost to other prompts (efficacy, specificity and robustness, each with its
numbers and grids), how to use it, its limitations, the full recipe and the hash of every file.

:func:`build_card` reads only files in the release folder (through
:func:`~.card_inputs.read_inputs`) and names any that is missing.  Text from the recipe (and
from what the stages derived from it: prompts found by the attack, sampled prompts) is shown
literally: it is escaped in Python through :mod:`.markdown_text` before it reaches the
template, never as HTML, a link or an image.  Jinja's autoescape is for HTML (entities that
Markdown code spans show as typed, and no escaping of Markdown's own links, images and
tables), so it stays off.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..control_chars import strip_controls
from ..errors import ExportError, LocopackError
from ..hub_ref import is_hub_id
from ..storage import atomic_write_text
from . import card_body as body
from . import markdown_text as md
from .card_inputs import CardInputs, read_inputs, recorded_allow_unmet
from .card_sections import evidence_values
from .card_signature import signature_section
from .card_verdict import requirements_section
from .layout import (
    ADAPTER_FILE,
    CARD_FILE,
    LOCALIZATION_PLOT,
    PROVENANCE_FILE,
    SIGNATURE_FILE,
    is_record,
    recorded_base,
    release_files,
    sha256_file,
)
from .robust_card import robust_rounds

if TYPE_CHECKING:
    from huggingface_hub import ModelCardData

    from ..recipe.schema import Recipe

#: the card's layout and prose (package data: see ``[tool.setuptools.package-data]``)
TEMPLATE = Path(__file__).parent / "templates" / "model_card.md.j2"


def card_files(folder: Path) -> list[str]:
    """The release files the card lists with their hashes: all but the card itself and the
    records (the history, provenance and signature: written after the card, so the card cannot
    list them)."""
    return [name for name in release_files(folder) if name != CARD_FILE and not is_record(name)]


def _is_hub_id(ref: str) -> bool:
    return is_hub_id(ref) and not Path(ref).exists()


def _license(recipe: Recipe, base: str) -> str | None:
    """The recipe's license, or with ``inherit`` the one the base model's card declares (a
    local folder's README.md, or the Hub repo's card); None where none can be read."""
    from huggingface_hub import ModelCard

    chosen = recipe.card.license
    if chosen != "inherit":
        return chosen
    local = Path(base) / CARD_FILE
    if not local.is_file() and not _is_hub_id(base):
        return None
    try:
        found = ModelCard.load(local if local.is_file() else base, ignore_metadata_errors=True)
    except (OSError, ValueError, yaml.YAMLError):  # unreachable or unreadable: no license known
        return None
    value = found.data.to_dict().get("license")
    return value if isinstance(value, str) else None


def build_card(
    folder: Path,
    allowed_unmet: bool | None = None,
    signer: str | None = None,
    recipe: Recipe | None = None,
) -> tuple[str, dict]:
    """The card's text and metadata for the release in ``folder``; ``allowed_unmet``: it was
    built with ``--allow-unmet`` [default: as its history's last entry says]; ``signer``: who
    is about to sign it [default: as its ``release.sig`` says, if any]; ``recipe``: the
    release's recipe, already read (see :func:`~locopack.release.layout.release_recipe`).

    Raises:
        ExportError: a file the card describes is missing or does not hold what the stage
            that writes it writes; the message names it.
    """
    try:
        return _build_card(folder, allowed_unmet, signer, recipe)
    except LocopackError:
        raise
    except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError, AttributeError) as err:
        raise ExportError(
            f"{folder}: edit.json, evidence.json, lora_manifest.json or localization.json does "
            f"not hold what locopack writes ({type(err).__name__}: {err}); were they edited by "
            "hand? Re-run the build to rewrite them"
        ) from None


def _metadata(inputs: CardInputs, folder: Path) -> ModelCardData:
    """The card's YAML header."""
    from huggingface_hub import ModelCardData

    recipe, provenance = inputs.recipe, inputs.provenance
    hub_base = _is_hub_id(recipe.base.model)
    kinds = sorted({e.card_tag for e in recipe.edits})
    return ModelCardData(
        # the Hub's base_model must name a Hub repo; a local base is named in the body only
        base_model=recipe.base.model if hub_base else None,
        base_model_relation=("finetune" if inputs.whole_model else "adapter") if hub_base else None,
        library_name="diffusers",
        license=_license(
            recipe, recorded_base(provenance, folder) or recipe.local_path(recipe.base.model)
        ),
        tags=[
            "locopack",
            "text-to-image",
            *(tag for fmt in inputs.formats for tag in fmt.card_tags),
            *kinds,
            provenance.family or "",
        ],
        widget=[
            {"text": strip_controls(g["prompt"]), "output": {"url": g["image"]}}
            for g in inputs.evidence.get("gallery", [])
        ],
    )


def _values(
    inputs: CardInputs, folder: Path, allowed_unmet: bool, signer: str | None
) -> dict[str, object]:
    """The template's values, by the names it uses."""
    recipe, prov = inputs.recipe, inputs.manifest["provenance"]
    base = recipe.base.model
    return {
        "title": md.inline(recipe.name),
        "requirements": requirements_section(inputs.evidence, allowed_unmet),
        "description": md.prose(recipe.card.description or recipe.description or ""),
        "base_link": f"[{md.code(base)}](https://huggingface.co/{base})"
        if _is_hub_id(base)
        else md.code(base),
        "site_kind": body.site_kind(prov),
        "edits": body.edits(recipe),
        "layers": [md.code(prov["denoiser"] + "." + path) for path in inputs.edit["layers"]],
        "localization": body.localization_values(inputs.localization),
        **body.text_paths(inputs.localization, prov),
        "evidence": body.evidence_header(recipe, inputs.evidence),
        **evidence_values(inputs.evidence),
        "settings": body.settings(recipe, inputs.edit, inputs.manifest),
        "robust": robust_rounds(inputs.edit),
        "usage": body.usage(base, recipe.edits[0].originals()[0]),
        # how to load a whole model first, then the adapter's other files
        "format_notes": [
            fmt.card_note
            for fmt in sorted(inputs.formats, key=lambda f: not f.whole_model)
            if fmt.card_note
        ],
        "lagging": body.lagging(inputs.evidence),
        "recipe_block": md.fenced(recipe.source_text, "yaml"),
        "hashes": [
            {"name": md.code(p, cell=True), "sha256": sha256_file(folder / p)}
            for p in card_files(folder)
        ],
        "signature": signature_section(folder, recipe.hub.repo or "RELEASE_FOLDER", signer),
        "files": {
            "plot": LOCALIZATION_PLOT,
            "adapter": ADAPTER_FILE,
            "signature": SIGNATURE_FILE,
            "provenance": PROVENANCE_FILE,
        },
    }


def _build_card(
    folder: Path, allowed_unmet: bool | None, signer: str | None, known: Recipe | None
) -> tuple[str, dict]:
    from huggingface_hub import ModelCard

    inputs = read_inputs(folder, known)
    data = _metadata(inputs, folder)
    if allowed_unmet is None:
        allowed_unmet = recorded_allow_unmet(folder)
    values = _values(inputs, folder, allowed_unmet, signer)
    card = ModelCard.from_template(data, template_path=str(TEMPLATE), **values)
    return str(card), data.to_dict()


def write_card(
    folder: Path,
    allowed_unmet: bool | None = None,
    signer: str | None = None,
    recipe: Recipe | None = None,
) -> Path:
    """Build the card and write ``README.md`` atomically (see :func:`build_card`)."""
    text, _ = build_card(Path(folder), allowed_unmet, signer, recipe)
    return atomic_write_text(Path(folder) / CARD_FILE, text)
