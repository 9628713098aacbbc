"""The records of a release: one pydantic model per file, each with a ``format`` version
(:mod:`locopack.record`), read and written through the model only.

=============================  ==================  ===========================
file                           model               lives in
=============================  ==================  ===========================
``delta.safetensors`` header   DeltaRecord         ``locopack.delta_record``
``localization.json``          LocalizationResult  ``locopack.localize.result``
``lora_manifest.json``         LoraManifest        ``locopack.export.records``
``merged/locopack_merge.json`` MergeRecord         ``locopack.export.records``
``edit.json``                  EditRecord          :mod:`.edit`
``evidence.json``              EvidenceRecord      :mod:`.evidence`
``history.jsonl`` (each line)  HistoryEntry        :mod:`.history`
=============================  ==================  ===========================

The core writes the first four, so their models live there (the core never imports the
release side); this package gathers all of them.  ``scripts/write_schemas.py`` writes their
JSON Schemas into ``docs/schemas/``.
"""

from __future__ import annotations

from ...delta_record import DeltaProvenance, DeltaRecord
from ...export.records import LoraManifest, MergeRecord
from ...localize.result import LocalizationResult
from .edit import EditRecord
from .evidence import EvidenceRecord
from .history import HistoryEntry

#: every record, by the name of its schema in docs/schemas/
RECORDS = {
    "delta": DeltaRecord,
    "localization": LocalizationResult,
    "lora_manifest": LoraManifest,
    "merge": MergeRecord,
    "edit": EditRecord,
    "evidence": EvidenceRecord,
    "history": HistoryEntry,
}

__all__ = [
    "RECORDS",
    "DeltaProvenance",
    "DeltaRecord",
    "EditRecord",
    "EvidenceRecord",
    "HistoryEntry",
    "LocalizationResult",
    "LoraManifest",
    "MergeRecord",
]
