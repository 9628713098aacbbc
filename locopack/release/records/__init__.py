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
JSON Schemas into ``docs/schemas/`` (:data:`.schemas.RECORDS` names each schema).
"""

from __future__ import annotations

import importlib

#: where each record is defined; imported when first asked for (the localization result's
#: module pulls in the sweep, and with it diffusers)
_HOMES = {
    "DeltaProvenance": "locopack.delta_record",
    "DeltaRecord": "locopack.delta_record",
    "LoraManifest": "locopack.export.records",
    "MergeRecord": "locopack.export.records",
    "LocalizationResult": "locopack.localize.result",
    "EditRecord": "locopack.release.records.edit",
    "EvidenceRecord": "locopack.release.records.evidence",
    "HistoryEntry": "locopack.release.records.history",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> type:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
