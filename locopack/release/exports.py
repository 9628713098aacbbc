"""Exporting a delta: the diffusers/PEFT adapter (+ manifest), a kohya file, a merged
checkpoint and an ONNX denoiser.  ``locopack build`` and ``locopack export`` both go through
:func:`export_delta`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ExportError
from .base import LoadedBase
from .layout import ADAPTER_FILE, MERGED_DIR, ONNX_DIR, recorded_base


@dataclass(frozen=True)
class ExportChoice:
    """What to export from a delta: the adapter always, and any of kohya, merged, ONNX."""

    max_rank: int = 64
    energy: float = 0.99999999
    adapter: bool = True
    kohya: bool = False
    merged: bool = False
    onnx: bool = False

    @classmethod
    def from_recipe(cls, settings: Any, family: Any) -> ExportChoice:
        """The recipe's ``export`` section for a base of ``family``: ``kohya`` (on by default)
        only where kohya files exist for the family."""
        return cls(
            settings.max_rank,
            settings.energy,
            settings.adapter,
            settings.kohya and family.kohya_metadata is not None,
            settings.merged,
            settings.onnx,
        )


def export_delta(
    delta: Any, out: Path, choice: ExportChoice, base: LoadedBase | None = None
) -> dict[str, Any]:
    """Write the exports of ``delta`` into ``out``: the diffusers/PEFT adapter (+ manifest),
    a kohya file, a merged checkpoint and an ONNX denoiser, as ``choice`` asks.

    ``base`` (needed for merged and ONNX) must be the model the delta was made for.

    Returns:
        {what: path} of everything written, plus ``manifest`` for the adapter.

    Raises:
        ExportError: kohya asked for a family without kohya files, or merged/ONNX without a base.
    """
    from ..export import write_adapter, write_kohya, write_merged

    if (choice.merged or choice.onnx) and base is None:
        raise ExportError("a merged or ONNX export needs the base model the delta was made for")
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
    It is loaded and checked before anything is written.
    """
    from ..delta import WeightDelta
    from ..fingerprint import check_base_model
    from ..models import load_pipeline

    delta = WeightDelta.load(delta_path)
    base = None
    if choice.merged or choice.onnx:
        prov = delta.provenance
        source = model or recorded_base(prov, delta_path.parent)
        if not source:
            raise ExportError(f"{delta_path}: its provenance names no base model; pass --model")
        revision = None if model else prov.get("base_commit") or prov.get("base_revision")
        pipe, family = load_pipeline(
            source,
            revision,
            prov.get("base_dtype", "float32"),
            None if model else prov.get("base_variant"),
            allow_pickle=allow_pickle,
        )
        check_base_model(pipe, family, prov, delta_path, force)
        base = LoadedBase(pipe, family, source, revision)
    return export_delta(delta, out, choice, base)


def _onnx_record(delta: Any) -> dict[str, Any]:
    """What the ONNX export records of the edit it carries."""
    prov = delta.provenance
    keys = ("recipe_name", "recipe_sha256", "base_fingerprint", "sites")
    return {"delta_sha256": delta.sha256(), **{k: prov.get(k) for k in keys}}
