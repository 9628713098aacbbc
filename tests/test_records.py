"""The release records: schemas in docs/ are current, golden files validate against them and
read through the models, reading is strict about newer files and lenient about older ones, and
a release made before the records existed still reads and audits."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from locopack.cli import cli
from locopack.errors import ExportError, RecipeError
from locopack.release.history import read_history
from locopack.release.records import (
    DeltaRecord,
    EditRecord,
    EvidenceRecord,
    HistoryEntry,
    LocalizationResult,
    LoraManifest,
)
from locopack.release.records.schemas import RECORDS, record_schemas, schema_text

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "docs" / "schemas"
GOLDEN = Path(__file__).parent / "golden" / "records"
OLD_RELEASE = Path(__file__).parent / "fixtures" / "release_v0"


def _schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


def test_the_schemas_in_docs_are_current():
    fresh = record_schemas()
    assert sorted(p.name for p in SCHEMAS.glob("*.schema.json")) == sorted(
        f"{name}.schema.json" for name in fresh
    ), "run scripts/write_schemas.py"
    for name, schema in fresh.items():
        written = (SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8")
        assert written == schema_text(schema), f"{name}: stale; run scripts/write_schemas.py"
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_each_golden_file_validates_against_its_schema_and_reads_through_its_model(name):
    data = json.loads((GOLDEN / f"{name}.json").read_text(encoding="utf-8"))
    jsonschema.validate(data, _schema(name), cls=jsonschema.Draft202012Validator)
    model = RECORDS[name]
    record = model.parse(data, name)
    assert record.format == model.FORMAT
    if name == "localization":  # written whole, its derived chosen_layers included
        assert record.to_dict() == data
    else:  # written with exactly the keys it was given
        assert record.to_json() == data


def test_a_history_entry_keeps_its_hash_through_the_model():
    data = json.loads((GOLDEN / "history.json").read_text(encoding="utf-8"))
    body = {k: v for k, v in data.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    expected = hashlib.sha256(canonical.encode()).hexdigest()
    entry = HistoryEntry.parse(data, "history")
    assert entry.hash == expected == entry.content_hash()


def test_a_golden_file_that_breaks_its_schema_is_refused_by_schema_and_model(tmp_path):
    data = json.loads((GOLDEN / "lora_manifest.json").read_text(encoding="utf-8"))
    data["modules"] = {path: {**m, "rank": "eight"} for path, m in data["modules"].items()}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, _schema("lora_manifest"), cls=jsonschema.Draft202012Validator)
    (tmp_path / "lora_manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match=r"lora_manifest.json: field 'modules\..*\.rank'"):
        LoraManifest.read(tmp_path / "lora_manifest.json")


def test_a_newer_file_is_refused_naming_the_file_and_the_field_or_version(tmp_path):
    data = json.loads((GOLDEN / "edit.json").read_text(encoding="utf-8"))
    path = tmp_path / "edit.json"
    path.write_text(json.dumps({**data, "sparsity": 0.5}))
    with pytest.raises(ExportError, match=r"edit.json: field 'sparsity': not a field this"):
        EditRecord.read(path)
    path.write_text(json.dumps({**data, "format": "locopack.edit/2"}))
    with pytest.raises(
        ExportError, match=r"edit.json: its format 'locopack.edit/2' was written by a newer"
    ):
        EditRecord.read(path)
    path.write_text(json.dumps({**data, "format": "locopack.evidence/1"}))
    with pytest.raises(ExportError, match="expected 'locopack.edit/1': not this kind of file"):
        EditRecord.read(path)
    nested = json.loads((GOLDEN / "history.json").read_text(encoding="utf-8"))
    nested["edits"][0]["weight"] = 2
    (tmp_path / "history.jsonl").write_text(json.dumps(nested) + "\n")
    with pytest.raises(ExportError, match=r"history.jsonl:1: field 'edits.0.weight'"):
        read_history(tmp_path / "history.jsonl")


def test_a_record_written_by_its_model_has_the_bytes_the_writers_always_wrote(tmp_path):
    for name, model in [("edit", EditRecord), ("evidence", EvidenceRecord)]:
        text = (GOLDEN / f"{name}.json").read_text(encoding="utf-8")
        record = model.parse(json.loads(text), name)
        record.write(tmp_path / f"{name}.json")
        assert (tmp_path / f"{name}.json").read_text(encoding="utf-8") == text


@pytest.fixture(scope="module")
def old_release(tmp_path_factory):
    """The release built by locopack before the records (tests/fixtures/release_v0), copied
    beside the sd1 twin it was made on, rebuilt here with the same seed."""
    root = tmp_path_factory.mktemp("old")
    result = CliRunner().invoke(cli, ["--threads", "1", "twin", "sd1", str(root / "tiny")])
    assert result.exit_code == 0, result.output
    shutil.copytree(OLD_RELEASE, root / "release_v0")
    return root


def test_a_release_made_before_the_records_reads_through_every_model(old_release):
    folder = old_release / "release_v0"
    edit = EditRecord.read(folder / "edit.json")  # no format then: read as version 1
    assert edit.format is None and "format" not in json.loads((folder / "edit.json").read_text())
    delta = DeltaRecord.read(folder / "delta.safetensors")
    evidence = EvidenceRecord.read(folder / "evidence.json")
    manifest = LoraManifest.read(folder / "lora_manifest.json")
    localization = LocalizationResult.load(folder / "localization.json")
    (entry,) = read_history(folder / "history.jsonl")
    assert entry.hash == entry.content_hash()
    assert edit.layers == delta.locopack.sites == localization.layers
    assert edit.delta_sha256 == manifest.delta_sha256 == entry.delta_sha256
    assert manifest.provenance == delta.locopack
    assert evidence.inputs.delta_sha256 == entry.delta_sha256
    assert set(entry.files) >= {"edit.json", "evidence.json", "lora_manifest.json"}


def test_a_release_made_before_the_records_audits(old_release):
    from locopack.fingerprint import model_fingerprint
    from locopack.models import load_pipeline

    base = old_release / "tiny"
    recorded = DeltaRecord.read(old_release / "release_v0" / "delta.safetensors").locopack
    assert model_fingerprint(*load_pipeline(str(base))) == recorded.base_fingerprint
    result = CliRunner().invoke(
        cli, ["--threads", "1", "audit", str(old_release / "release_v0"), "--base", str(base)]
    )
    assert result.exit_code == 0, result.output
    assert "ok    history chain: 1 entries" in result.output
    assert "ok    adapter:" in result.output and "FAIL" not in result.output


def test_a_localization_file_with_a_bad_chosen_window_is_refused(tmp_path):
    data = json.loads((GOLDEN / "localization.json").read_text(encoding="utf-8"))
    path = tmp_path / "localization.json"
    path.write_text(json.dumps({**data, "chosen": len(data["candidates"])}))
    with pytest.raises(RecipeError, match="'chosen' must be a window index from 0"):
        LocalizationResult.load(path)
