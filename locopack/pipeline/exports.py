"""Exporting a delta: the diffusers/PEFT adapter (+ manifest), a kohya file, a merged
checkpoint and an ONNX denoiser.  ``locopack build`` and ``locopack export`` both go through
:func:`export_delta`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ExportError
from ..export.formats import ExportChoice
from ..release.layout import ADAPTER_FILE, MERGED_DIR, ONNX_DIR, recorded_base
from .base import LoadedBase
from .lock import build_lock, check_free

if TYPE_CHECKING:
    from ..delta import WeightDelta
    from ..models.base import ModelFamily


def export_delta(
    delta: WeightDelta, out: Path, choice: ExportChoice, base: LoadedBase | None = None
) -> dict[str, Any]:
    """Write the exports of ``delta`` into ``out``: the diffusers/PEFT adapter (+ manifest),
    a kohya file, a merged checkpoint and an ONNX denoiser, as ``choice`` asks.

    ``base`` (needed for merged and ONNX) must be the model the delta was made for.  Every
    format is checked against the delta's family (and ONNX against the denoiser's inputs)
    before anything is written.

    Returns:
        {what: path} of everything written, plus ``manifest`` for the adapter.

    Raises:
        ExportError: a format the family cannot have (kohya for a family without kohya files,
            ONNX for a denoiser whose inputs it cannot carry), or merged/ONNX without a base;
            nothing is written then.
    """
    from ..export import write_adapter, write_kohya, write_merged

    if (choice.merged or choice.onnx) and base is None:
        raise ExportError("a merged or ONNX export needs the base model the delta was made for")
    choice.check(_delta_family(delta))
    if choice.onnx:
        from ..export.onnx_tracing import trace_spec

        trace_spec(base.pipe, base.family)  # refuses a denoiser ONNX cannot carry
    written: dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)
    if choice.adapter:
        written["manifest"] = write_adapter(delta, out, choice.max_rank, choice.energy)
        written["adapter"] = out / ADAPTER_FILE
    if choice.kohya:
        written["kohya"] = write_kohya(delta, out, choice.max_rank, choice.energy)
    if choice.merged:
        written["merged"] = write_merged(base.pipe, base.family, delta, out / MERGED_DIR)
    if choice.onnx:
        from ..export.onnx import export_denoiser_onnx

        with delta.applied(base.denoiser):
            written["onnx"] = export_denoiser_onnx(
                base.pipe, base.family, out / ONNX_DIR, metadata=_onnx_record(delta)
            )
    return written


def run_export(
    delta_path: Path,
    out: Path,
    choice: ExportChoice,
    *,
    model: str | None = None,
    force: bool = False,
    allow_pickle: bool = False,
) -> dict[str, Any]:
    """Export a ``delta.safetensors`` into ``out`` (see :func:`export_delta`).

    The base model (needed for merged and ONNX) is the one the delta records (a relative
    location is resolved against the delta's folder) unless ``model`` names another folder or
    Hub id; it must be the model the delta was made for (its fingerprint), unless ``force``.
    A format the delta's family cannot have is refused before the base is loaded.
    It is loaded and checked before anything is written; the writing holds ``out``'s lock
    (:mod:`.lock`), as a build does.

    Raises:
        FolderLockedError: another command is writing into ``out``.
    """
    from ..delta import WeightDelta
    from ..fingerprint import check_base_model
    from ..models import load_pipeline

    check_free(out)  # before the base is loaded; the lock is taken to write
    delta = WeightDelta.load(delta_path)
    choice.check(_delta_family(delta))
    base = None
    if choice.merged or choice.onnx:
        prov = delta.provenance
        source = model or recorded_base(prov, delta_path.parent)
        if not source:
            raise ExportError(f"{delta_path}: its provenance names no base model; pass --model")
        revision = None if model else prov.base_commit or prov.base_revision
        pipe, family = load_pipeline(
            source,
            revision,
            prov.base_dtype or "float32",
            None if model else prov.base_variant,
            allow_pickle=allow_pickle,
        )
        check_base_model(pipe, family, prov.to_json(), delta_path, force)
        base = LoadedBase(pipe, family, source, revision)
    with build_lock(out, command="export"):
        return export_delta(delta, out, choice, base)


def _delta_family(delta: WeightDelta) -> type[ModelFamily]:
    """The family the delta's provenance names."""
    from ..models import get_family

    return get_family(str(delta.provenance.family))


def _onnx_record(delta: WeightDelta) -> dict[str, str | list[str] | None]:
    """What the ONNX export records of the edit it carries."""
    prov = delta.provenance
    return {
        "delta_sha256": delta.sha256(),
        "recipe_name": prov.recipe_name,
        "recipe_sha256": prov.recipe_sha256,
        "base_fingerprint": prov.base_fingerprint,
        "sites": prov.sites,
    }
