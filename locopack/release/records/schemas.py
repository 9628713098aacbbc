"""The JSON Schemas of the records, as ``docs/schemas/<name>.schema.json`` holds them.

``scripts/write_schemas.py`` writes them; a test regenerates them in memory and fails when a
file in ``docs/schemas/`` is stale.  Each schema describes the file as locopack writes it
(pydantic's serialization mode: ``localization.json``'s derived ``chosen_layers`` included,
the run facts it never writes left out); ``delta`` describes the header of
``delta.safetensors`` with its ``locopack`` entry decoded from its JSON string.
"""

from __future__ import annotations

import json

from ...delta_record import DeltaRecord
from ...export.records import LoraManifest, MergeRecord
from ...localize.result import LocalizationResult
from ...record import JsonObject, Record
from .edit import EditRecord
from .evidence import EvidenceRecord
from .history import HistoryEntry

__all__ = ["RECORDS", "SCHEMA_DIALECT", "record_schemas", "schema_text"]

#: every record, by the name of its schema in docs/schemas/ (and of its golden file)
RECORDS: dict[str, type[Record]] = {
    "delta": DeltaRecord,
    "localization": LocalizationResult,
    "lora_manifest": LoraManifest,
    "merge": MergeRecord,
    "edit": EditRecord,
    "evidence": EvidenceRecord,
    "history": HistoryEntry,
}

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def record_schemas() -> dict[str, JsonObject]:
    """{name: JSON Schema} of every record (see :data:`RECORDS`)."""
    schemas = {}
    for name, model in RECORDS.items():
        schema = model.model_json_schema(mode="serialization")
        schemas[name] = {"$schema": SCHEMA_DIALECT, "$id": f"{name}.schema.json", **schema}
    return schemas


def schema_text(schema: JsonObject) -> str:
    """A schema file's text: sorted keys, indented by two, one trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
