"""The records the exports write: ``lora_manifest.json`` beside the adapter, and
``locopack_merge.json`` inside a merged checkpoint (see :mod:`locopack.record`).

They live in the core, beside their writers: the core never imports the release side, which
reads them through :mod:`locopack.release.records`.
"""

from __future__ import annotations

from ..delta_record import DeltaProvenance
from ..filenames import ADAPTER_FILE
from ..record import Record, RecordPart

__all__ = ["LoraManifest", "ManifestModule", "MergeRecord"]


class ManifestModule(RecordPart):
    """One module of the adapter: its LoRA rank, the relative error of its factors, the
    shape of its ΔW."""

    rank: int
    relative_error: float
    shape: list[int]


class LoraManifest(Record):
    """``lora_manifest.json``: how the delta was factored into the adapter (the energy kept,
    the rank cap, each module's rank and error) and the delta's provenance."""

    FORMAT = "locopack.lora_manifest/1"
    adapter_file: str = ADAPTER_FILE
    denoiser: str
    max_rank: int
    energy: float
    delta_sha256: str
    modules: dict[str, ManifestModule]
    max_relative_error: float
    provenance: DeltaProvenance


class MergeRecord(Record):
    """``merged/locopack_merge.json``: which tensors of the base the delta was added to, the
    delta's hash and provenance."""

    FORMAT = "locopack.merge/1"
    delta_sha256: str
    edited_tensors: list[str]
    provenance: DeltaProvenance
