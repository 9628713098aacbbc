"""The built-in export formats, one registered entry each, and :class:`ExportChoice`: which
formats a delta gets, decided once for ``locopack build`` and ``locopack export`` (which write
them, :mod:`locopack.pipeline.exports`) and ``locopack validate`` (which lists their files).

A format a family cannot have is dropped from a recipe's exports where it is on by default
(kohya exists for the Stable Diffusion UNets only) and refused, before anything is written,
where it is asked for by name (:meth:`ExportChoice.check`).  Another format is one more
:func:`~locopack.export.registry.register_format` call (see :mod:`.registry`); the writers
import their model libraries only when they run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..filenames import ADAPTER_FILE, KOHYA_FILE, MANIFEST_FILE, MERGED_DIR, ONNX_DIR
from .registry import (
    AskedFormats,
    ExportFormat,
    ExportJob,
    Written,
    export_formats,
    get_format,
    register_format,
    unregister_format,
)

if TYPE_CHECKING:
    from ..models.base import ModelFamily
    from ..models.loaded import LoadedBase

__all__ = [
    "ExportChoice",
    "ExportFormat",
    "ExportJob",
    "export_formats",
    "get_format",
    "no_kohya",
    "register_format",
    "unregister_format",
]


def _write_adapter(job: ExportJob) -> Written:
    from .lora import write_adapter

    manifest = write_adapter(job.delta, job.out, job.max_rank, job.energy)
    return {"manifest": manifest, "adapter": job.out / ADAPTER_FILE}


def _write_kohya(job: ExportJob) -> Written:
    from .lora import write_kohya

    return {"kohya": write_kohya(job.delta, job.out, job.max_rank, job.energy)}


def _write_merged(job: ExportJob) -> Written:
    from .merged import write_merged

    return {"merged": write_merged(job.base_model(), job.delta, job.out / MERGED_DIR)}


def _write_onnx(job: ExportJob) -> Written:
    from .onnx import export_denoiser_onnx

    base, prov = job.base_model(), job.delta.provenance
    keys = ("recipe_name", "recipe_sha256", "base_fingerprint", "sites")
    record = {"delta_sha256": job.delta.sha256(), **{k: getattr(prov, k) for k in keys}}
    with job.delta.applied(base.denoiser):
        return {"onnx": export_denoiser_onnx(base, job.out / ONNX_DIR, metadata=record)}


def _onnx_traceable(base: LoadedBase) -> None:
    from .onnx_tracing import trace_spec

    trace_spec(base)  # refuses a denoiser ONNX cannot carry


def no_kohya(family: type[ModelFamily]) -> str | None:
    """Why ``family`` gets no kohya file, or None where it does."""
    if family.kohya_metadata is not None:
        return None
    return (
        f"kohya LoRA files exist for Stable Diffusion UNets only, not for "
        f"{family.pretty_name} ({family.name})"
    )


def _no_onnx(family: type[ModelFamily]) -> str | None:
    if not family.onnx_refusal:
        return None
    return f"no ONNX export for {family.pretty_name} ({family.name}): {family.onnx_refusal}"


register_format(
    ExportFormat(
        "adapter",
        "diffusers/PEFT LoRA: pytorch_lora_weights.safetensors + lora_manifest.json.",
        _write_adapter,
        lambda family: [ADAPTER_FILE, MANIFEST_FILE],
        default=True,
        # the evidence is generated, and the audit checks, through the adapter
        required="every release carries its LoRA adapter",
        card_tags=("lora",),
    )
)
register_format(
    ExportFormat(
        "kohya",
        "kohya LoRA file for ComfyUI / AUTOMATIC1111 (Stable Diffusion UNets only).",
        _write_kohya,
        lambda family: [KOHYA_FILE],
        default=True,
        refusal=no_kohya,
        instead=" (the diffusers/PEFT adapter is this family's LoRA format)",
        only_for="a Stable Diffusion UNet base",
        card_note="`lora_kohya.safetensors` (when present) is the same adapter in the kohya "
        "format that ComfyUI and\nAUTOMATIC1111 load.",
    )
)
register_format(
    ExportFormat(
        "merged",
        "Full pipeline folder with the edit merged (merged/).",
        _write_merged,
        lambda family: [f"{MERGED_DIR}/"],
        needs_base=True,
        card_tags=("merged",),
        card_note="The merged checkpoint in `merged/` loads with "
        "`DiffusionPipeline.from_pretrained`.",
        whole_model=True,
    )
)
register_format(
    ExportFormat(
        "onnx",
        "Edited denoiser as ONNX (onnx/; needs [onnx] extra).",
        _write_onnx,
        lambda family: [f"{ONNX_DIR}/{family.denoiser_attr}/" if family else f"{ONNX_DIR}/"],
        refusal=_no_onnx,
        needs_base=True,
        check_base=_onnx_traceable,
    )
)


@dataclass(frozen=True)
class ExportChoice:
    """What to export from a delta: the names of the chosen formats, and the LoRA settings."""

    names: tuple[str, ...] = ("adapter",)
    max_rank: int = 64
    energy: float = 0.99999999

    @classmethod
    def from_flags(
        cls, flags: Mapping[str, bool], max_rank: int = 64, energy: float = 0.99999999
    ) -> ExportChoice:
        """The formats whose flag is set in ``flags`` ({format name: bool}), in registry order."""
        return cls(tuple(f.name for f in export_formats() if flags.get(f.name)), max_rank, energy)

    @classmethod
    def from_recipe(cls, settings: AskedFormats, family: type[ModelFamily] | None) -> ExportChoice:
        """The recipe's ``export`` section for a base of ``family``: a format on by default
        (kohya) only where the family can have it (kept as asked where the family is not
        known, None)."""
        asked = settings.asked()
        kept = {
            f.name: asked.get(f.name, f.default)
            and not (f.default and family is not None and f.refusal(family))
            for f in export_formats()
        }
        return cls.from_flags(kept, settings.max_rank, settings.energy)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def chosen(self) -> list[ExportFormat]:
        """The chosen formats' entries, in the order they are written."""
        return [get_format(name) for name in self.names]

    def formats(self) -> list[str]:
        """The chosen formats' names, in the order they are written."""
        return list(self.names)

    @property
    def needs_base(self) -> bool:
        """Whether a chosen format needs the base model (merged, ONNX)."""
        return any(f.needs_base for f in self.chosen())

    def files(self, family: type[ModelFamily] | None) -> list[str]:
        """The files and folders (``name/``) the chosen formats write for ``family`` (the
        ONNX folder without its denoiser's subfolder where the family is not known)."""
        return [name for fmt in self.chosen() for name in fmt.files(family)]

    def check(self, family: type[ModelFamily]) -> None:
        """Refuse, before anything is written, a format ``family`` cannot have.

        Raises:
            ExportError: naming the format, the family and what to do.
        """
        for fmt in self.chosen():
            fmt.refuse(family)
