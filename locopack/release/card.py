"""The model card: README.md of a release, built from what the earlier stages wrote.

Metadata through huggingface_hub's ``ModelCardData``: ``base_model`` and its relation
(``adapter`` for a LoRA release, ``finetune`` when a merged checkpoint is released),
``library_name: diffusers``, tags, the license inherited from the base where it is known, and a
widget gallery of after images.  The body says what was edited and why, where (the localized
layers and the localization plot), how well and at what cost to other prompts
(:mod:`.card_sections`: efficacy, specificity and robustness, each with its numbers and
grids), how to use it, its limitations, the full recipe and the hash of every file.

:func:`build_card` reads only files in the release folder and names any that is missing.  Text
from the recipe (and from what the stages derived from it: prompts found by the attack, sampled
prompts) is shown literally, through :mod:`.markdown_text`: never as HTML, a link or an image.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..control_chars import strip_controls
from ..errors import ExportError, LocopackError
from ..evidence.detectors import is_plugin
from ..export.records import LoraManifest
from ..hub_ref import is_hub_id
from ..localize.result import LocalizationResult
from ..storage import atomic_write_text
from . import markdown_text as md
from .card_sections import card_images, evidence_sections
from .card_signature import signature_section
from .card_verdict import requirements_section
from .layout import (
    ADAPTER_FILE,
    CARD_FILE,
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
    is_record,
    recorded_base,
    release_files,
    sha256_file,
)
from .records.edit import EditRecord
from .records.evidence import EvidenceRecord
from .robust_card import robust_rounds

if TYPE_CHECKING:
    from ..delta_record import DeltaProvenance
    from ..models.base import ModelFamily
    from ..recipe.schema import Recipe


def card_files(folder: Path) -> list[str]:
    """The release files the card lists with their hashes: all but the card itself and the
    records (the history, provenance and signature: written after the card, so the card cannot
    list them)."""
    return [name for name in release_files(folder) if name != CARD_FILE and not is_record(name)]


def _is_hub_id(ref: str) -> bool:
    return is_hub_id(ref) and not Path(ref).exists()


def _require(folder: Path, name: str, needed_for: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise ExportError(
            f"{folder}: {name} is missing ({needed_for}); re-run the stage "
            "that writes it before building the card"
        )
    return path


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


def _limitations(evidence: EvidenceRecord) -> list[str]:
    """Held-out prompts whose score moved less than half as much as the edited prompts'."""
    notes = []
    for edit in evidence.edits:
        sets = edit.sets
        if "edited" not in sets or "held_out" not in sets:
            continue
        key, sign = edit.success_score

        def moves(item, key=key, sign=sign):
            before, after = item["scores"]["before"][key], item["scores"]["after"][key]
            return [sign * (a - b) for a, b in zip(after, before, strict=True)]

        edited = moves(sets["edited"])
        typical = sum(edited) / len(edited)
        held = sets["held_out"]
        for prompt, move in zip(held["prompts"], moves(held), strict=True):
            if move < 0.5 * typical:
                notes.append(
                    f"- {md.code(prompt)} ({md.inline(edit.label)}): moved {move:+.2f} "
                    f"vs {typical:+.2f} on the edited prompts"
                )
    return notes


def build_card(
    folder: Path, allowed_unmet: bool | None = None, signer: str | None = None
) -> tuple[str, dict]:
    """The card's text and metadata for the release in ``folder``; ``allowed_unmet``: it was
    built with ``--allow-unmet`` [default: as its history's last entry says]; ``signer``: who
    is about to sign it [default: as its ``release.sig`` says, if any].

    Raises:
        ExportError: a file the card describes is missing or does not hold what the stage
            that writes it writes; the message names it.
    """
    try:
        return _build_card(folder, allowed_unmet, signer)
    except LocopackError:
        raise
    except (KeyError, TypeError, IndexError, ValueError, ZeroDivisionError, AttributeError) as err:
        raise ExportError(
            f"{folder}: edit.json, evidence.json, lora_manifest.json or localization.json does "
            f"not hold what locopack writes ({type(err).__name__}: {err}); were they edited by "
            "hand? Re-run the build to rewrite them"
        ) from None


def _build_card(folder: Path, allowed_unmet: bool | None, signer: str | None) -> tuple[str, dict]:
    from huggingface_hub import ModelCard, ModelCardData

    from ..recipe.schema import load_recipe

    if not (folder / RECIPE_FILE).is_file():
        raise ExportError(f"{folder}: {RECIPE_FILE} is missing; is this a locopack output folder?")
    recipe = load_recipe(folder / RECIPE_FILE)
    edit = EditRecord.read(_require(folder, EDIT_FILE, "the edited layers and edit quality"))
    evidence = EvidenceRecord.read(_require(folder, EVIDENCE_FILE, "the before/after evidence"))
    manifest = LoraManifest.read(_require(folder, MANIFEST_FILE, "the adapter's ranks"))
    localization = None
    if (folder / LOCALIZATION_FILE).is_file():
        localization = LocalizationResult.load(folder / LOCALIZATION_FILE)
    referenced = card_images(evidence.to_json())
    referenced += [g.image for g in evidence.gallery]
    referenced += [DELTA_FILE, ADAPTER_FILE]
    referenced += [LOCALIZATION_PLOT] if localization else []
    for name in referenced:
        if not (folder / name).is_file():
            raise ExportError(f"{folder}: {name} is missing but the card refers to it")

    provenance = manifest.provenance
    merged = (folder / MERGED_DIR / PIPELINE_INDEX).is_file()
    kinds = sorted({e.card_tag for e in recipe.edits})
    data = ModelCardData(
        # the Hub's base_model must name a Hub repo; a local base is named in the body only
        base_model=recipe.base.model if _is_hub_id(recipe.base.model) else None,
        base_model_relation=("finetune" if merged else "adapter")
        if _is_hub_id(recipe.base.model)
        else None,
        library_name="diffusers",
        license=_license(
            recipe, recorded_base(provenance, folder) or recipe.local_path(recipe.base.model)
        ),
        tags=[
            "locopack",
            "text-to-image",
            *(["lora"] if not merged else ["lora", "merged"]),
            *kinds,
            provenance.family or "",
        ],
        widget=[
            {"text": strip_controls(g.prompt), "output": {"url": g.image}} for g in evidence.gallery
        ],
    )
    if allowed_unmet is None:
        allowed_unmet = _recorded_allow_unmet(folder)
    body = _body(recipe, folder, edit, evidence, manifest, localization, merged)
    title, _, rest = body.partition("\n\n")  # the verdict comes right after the title
    verdict = requirements_section(evidence, allowed_unmet)
    body = f"{title}\n\n{verdict}\n{rest}" if verdict else body
    body += "\n" + signature_section(folder, recipe.hub.repo or "RELEASE_FOLDER", signer)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    return str(card), data.to_dict()


def token_rows_text(parts: list[dict[str, Any]]) -> str:
    """One edit prompt's ``token_rows`` (:mod:`locopack.edit.tokens`) in words: ``CLIP 1-2 and
    4 (last: 4), T5 0-1 and 3 (last: 3)``."""
    words = []
    for part in parts:
        runs: list[list[int]] = []
        for i in part["positions"]:
            if runs and i == runs[-1][-1] + 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        spans = [f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs]
        last = f" (last: {part['last']})" if "last" in part else ""
        words.append(f"{md.inline(part['encoder'])} {' and '.join(spans)}{last}")
    return ", ".join(words)


def _body(recipe, folder, edit, evidence, manifest, localization, merged) -> str:
    prov = manifest.provenance
    what = "\n".join(
        f"- **{e.kind}** {e.subject} *{md.inline(e.label)}* → "
        f"{', '.join(md.inline(repr(t)) for t in dict.fromkeys(e.targets_expanded()))} "
        f"({len(e.prompts)} prompts)"
        for e in recipe.edits
    )
    description = md.prose(recipe.card.description or recipe.description or "")
    layers = "\n".join(f"- {md.code(prov.denoiser + '.' + path)}" for path in edit.layers)
    where = ""
    if localization:
        chosen = localization.candidates[localization.chosen]
        baseline, everything = localization.baseline, localization.all_sites
        where = (
            f"\nLocoGen scored {len(localization.candidates)} windows of "
            f"{localization.window} consecutive sites ({localization.mode} mode); the "
            f"chosen window scored {chosen.mean:.2f} (baseline {baseline.mean:.2f}, "
            f"all sites altered {everything.mean:.2f}).\n\n"
            "![localization](localization.png)\n"
        )
        from ..pipeline.select_sites import trail_table  # the editable selection's trail, if any

        where += trail_table(localization)
    where += _text_path_notes(localization, prov)
    errors = edit.modules.values()
    limitations = _limitations(evidence) or [
        "- none of the held-out prompts lagged (see the rule below)"
    ]
    ranks = sorted({m.rank for m in manifest.modules.values()})
    versions = ", ".join(f"{k} {v}" for k, v in sorted(prov.versions.items()))
    hashes = "\n".join(
        f"| {md.code(p, cell=True)} | `{sha256_file(folder / p)}` |" for p in card_files(folder)
    )
    usage_base = recipe.base.model
    hub_like = _is_hub_id(usage_base)
    base_link = (
        f"[{md.code(usage_base)}](https://huggingface.co/{usage_base})"
        if hub_like
        else md.code(usage_base)
    )
    seeds = ", ".join(map(str, evidence.all_seeds()))
    settings = (
        f"λ = {prov.lam}, matrices: {prov.matrices}, tokens: {prov.tokens}, "
        f"preserve weight {prov.preserve_weight}"
    )
    kept = (
        f" (the preserve prompts include {len(prov.neighbours)} neighbours drawn from "
        f"{md.code(recipe.edit.neighbours.source)}: prompts no part of the recipe lists)"
        if prov.neighbours and recipe.edit.neighbours
        else ""
    )
    rows = "; ".join(
        f"{md.code(r['prompt'])}: {token_rows_text(r['parts'])}" for r in prov.token_rows
    )
    if rows:
        rows = f"\n- edited token rows (positions within each encoder's tokens): {rows}"
    merged_note = (
        "The merged checkpoint in `merged/` loads with `DiffusionPipeline.from_pretrained`."
        if merged
        else ""
    )
    return f"""
# {md.inline(recipe.name)}

{description}

An edit of {base_link} made with locopack from a declarative recipe: LocoGen localized the
attribute to a few {_site_kind(prov)} and LocoEdit changed only their key/value matrices in
closed form (Basu et al., *On Mechanistic Knowledge Localization in Text-to-Image Generative
Models*, ICML 2024).

## What was edited

{what}

## Where: the localized layers

{layers}
{where}
## How well: before / after evidence

Before and after share their seeds ({seeds}), {evidence.steps} steps,
guidance {evidence.guidance}; CLIP score (100·cos) with {md.code(evidence.scorer)}; the edit
was applied as a user loads it ({evidence.applied}).{_plugin_note(recipe)}

{evidence_sections(evidence.to_json())}
## Edit settings

- {settings}
- {prov.columns} edit columns, {prov.preserve_columns} preserve columns{kept}{rows}
- largest relative edit error ‖W′x − Wy‖/‖Wy‖: {max(m.edit_error for m in errors):.2e}
- LoRA ranks {ranks}, largest relative reconstruction error {manifest.max_relative_error:.1e}
- base fingerprint `{prov.base_fingerprint}`; recipe sha256 `{prov.recipe_sha256}`
- versions: {versions}
{robust_rounds(edit.to_json())}
## How to use

{_usage(usage_base, recipe.edits[0].originals()[0])}

Or `locopack.apply(pipe, "<repo or folder>")`, which also checks the base model's fingerprint.
{merged_note}
`lora_kohya.safetensors` (when present) is the same adapter in the kohya format that ComfyUI and
AUTOMATIC1111 load.

## Limitations

Held-out paraphrases whose score moved less than half as much as the edited prompts' did
(CLIP to the original prompt for erasures, to the target for updates):

{chr(10).join(limitations)}

CLIP scores measure text-image agreement, not the absence of a concept; check the grids.

## Recipe

{md.fenced(recipe.source_text, "yaml")}

## Files

| file | sha256 |
|---|---|
{hashes}
"""


def _plugin_note(recipe: Recipe) -> str:
    """Names the plug-in detectors (the user's code, run with ``--allow-code``), if any."""
    plugins = [d.name for d in recipe.evidence.detectors if is_plugin(d.name)]
    if not plugins:
        return ""
    names = ", ".join(md.code(name) for name in plugins)
    return f"\nPlug-in detectors, code run with `--allow-code`: {names}."


def _usage(base: str, prompt: str) -> str:
    """The "how to use" snippet; JSON string literals are Python ones, whatever they hold."""
    return md.fenced(
        "import torch\n"
        "from diffusers import DiffusionPipeline\n\n"
        f"pipe = DiffusionPipeline.from_pretrained({json.dumps(base, ensure_ascii=False)})\n"
        'pipe.load_lora_weights("<this repo or folder>")  # pytorch_lora_weights.safetensors\n'
        f"image = pipe({json.dumps(prompt, ensure_ascii=False)}).images[0]",
        "python",
    )


def _family(prov: DeltaProvenance) -> type[ModelFamily] | None:
    """The release's model family, or None where the delta names none that is known."""
    from ..models.registry import FAMILIES

    return FAMILIES.get(prov.family or "")


def _refines_text(prov: DeltaProvenance) -> bool:
    """Whether the release's family has text refiner sites (Z-Image)."""
    family = _family(prov)
    return family is not None and family.refines_text


def _site_kind(prov: DeltaProvenance) -> str:
    """What the edited sites are called for the release's family."""
    family = _family(prov)
    if family is not None and family.joint_attention:
        return "joint-attention blocks (their text key/value projections)"
    if family is not None and family.refines_text:
        return "text refiner blocks (their key/value projections, which read text only)"
    return "cross-attention layers"


def _text_path_notes(localization: LocalizationResult | None, prov: DeltaProvenance) -> str:
    """What the card must say about text paths the edit leaves alone or changes besides the
    sites: the pooled vector of joint-attention transformers, FLUX single-stream sites."""
    notes = []
    pooled = localization.pooled_only if localization else None
    if pooled is not None:  # the reference lines share their settings
        base = localization.baseline.mean
        alone, sites = pooled.mean - base, localization.all_sites.mean - base
        notes.append(
            "The pooled CLIP vector modulates every block and is not a site: LocoGen kept it at "
            "the original prompt, and the edit does not change it. Swapped alone it moved the "
            f"score by {alone:+.2f}; every site altered, with the pooled vector kept, by "
            f"{sites:+.2f}."
        )
        if abs(alone) > abs(sites):
            ratio = f" ({abs(alone) / abs(sites):.0f}x)" if sites else ""
            notes.append(
                "On this model the pooled path moves the images more than all the sites "
                f"together{ratio}: what it carries of the concept is left as it was."
            )
    if _refines_text(prov):
        notes.append(
            "The sites are text-only: the blocks that refine the text before it joins the "
            "image tokens in one stream. That stream's projections map image and text rows "
            "with the same weights; they are not sites, and the edit leaves them unchanged."
        )
    family = _family(prov)
    if family is not None and family.card_note:
        notes.append(family.card_note)
    if prov.image_sites:
        listed = ", ".join(md.code(path) for path in prov.image_sites)
        notes.append(
            f"The edit includes single-stream sites ({listed}), whose key/value projections "
            "also map image tokens: there it changes the image tokens' keys and values too, "
            "in every image, also of prompts without the concept."
        )
    return "".join(f"\n{note}\n" for note in notes)


def _recorded_allow_unmet(folder: Path) -> bool:
    """Whether the history's last entry says the release was built with ``--allow-unmet``."""
    from .history import read_history

    try:
        entries = read_history(folder / HISTORY_FILE)
    except LocopackError:
        return False
    requirements = entries[-1].requirements if entries else None
    return requirements is not None and requirements.allowed_unmet


def write_card(folder: Path, allowed_unmet: bool | None = None, signer: str | None = None) -> Path:
    """Build the card and write ``README.md`` atomically (see :func:`build_card`)."""
    text, _ = build_card(Path(folder), allowed_unmet, signer)
    return atomic_write_text(Path(folder) / CARD_FILE, text)


def card_metadata_is_valid(path: Path) -> dict:
    """Parse a written card with ``ModelCard.load`` and return its metadata as a dict."""
    from huggingface_hub import ModelCard

    data = ModelCard.load(path).data.to_dict()
    yaml.safe_dump(data)
    return data
