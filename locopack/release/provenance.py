"""Build provenance of a release: an in-toto statement with an SLSA v1 provenance predicate.

:data:`PROVENANCE_FILE` is written when a release is signed, from its history, and the
signature covers it.  It says, in the vocabulary supply-chain tools read
(https://slsa.dev/spec/v1.0/provenance):

- **subject**: every file of the release with its sha256, the history included;
- **materials** (``resolvedDependencies``): the base model as the recipe names it, with the Hub
  commit that was loaded and its fingerprint; the CLIP scorer; the recipe's sha256; and each
  earlier release of the chain by its history entry's hash, the one just before with the sha256
  of its ``release.sig`` where that release is signed (that release's own provenance names the
  one before it, and so on);
- **builder**: locopack's version with torch's, diffusers' and transformers', and the device
  kind the build ran on.

No time is written (the history keeps when): the same history gives the same bytes.  The
audit rebuilds the statement from the history and requires it to be the one in the release,
except for the earlier signature's digest, which it checks against that release where it can
reach it (:mod:`.attest`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .layout import HISTORY_FILE, PROVENANCE_FILE, SIGNATURE_FILE, sha256_file
from .records.history import HistoryEntry
from .signing import NEEDS_EXTRA, SignatureError

BUILD_TYPE = "urn:locopack:build:v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
#: the annotation of the previous release that holds its signature's sha256
SIGNATURE_DIGEST = "signature_sha256"


def _material(name: str, uri: Any = None, digest: dict | None = None, **notes: Any) -> Any:
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor

    annotations = {k: v for k, v in notes.items() if v is not None}
    clean = {k: v for k, v in (digest or {}).items() if v}
    return ResourceDescriptor(
        name=name, uri=str(uri or ""), digest=clean or None, annotations=annotations or None
    ).pb


def provenance_statement(
    folder: Path, entries: list[HistoryEntry], previous_signature: str | None
) -> dict[str, Any]:
    """The statement for the release in ``folder`` whose history is ``entries``;
    ``previous_signature``: the sha256 of the previous release's ``release.sig``, if signed.

    Returns:
        The statement as a JSON-ready dict (written by :func:`statement_text`).

    Raises:
        SignatureError: the `sign` extra (in-toto-attestation) is not installed.
    """
    try:
        from google.protobuf import json_format
        from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
        from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
        from in_toto_attestation.v1.statement import Statement
    except ImportError:
        raise SignatureError(NEEDS_EXTRA) from None

    last = entries[-1]
    files = {**last.files, HISTORY_FILE: sha256_file(folder / HISTORY_FILE)}
    subjects = [
        ResourceDescriptor(name=name, digest={"sha256": digest}).pb
        for name, digest in sorted(files.items())
    ]
    materials = [
        _material(
            "base_model",
            last.base_model,
            {"gitCommit": last.base_commit},
            revision=last.base_revision,
            fingerprint=last.base_fingerprint,
        ),
        _material("scorer", last.scorer_location),
        _material("recipe", None, {"sha256": last.recipe_sha256}),
    ]
    for entry in entries[:-1]:
        just_before = entry is entries[-2]
        notes = {SIGNATURE_DIGEST: previous_signature} if just_before else {}
        materials.append(
            _material(
                f"release {entry.index}: {entry.recipe_name}",
                None,
                {"sha256": entry.hash},
                **notes,
            )
        )
    versions = last.versions
    predicate = provenance_pb2.Provenance(
        build_definition=provenance_pb2.BuildDefinition(
            build_type=BUILD_TYPE,
            resolved_dependencies=materials,
        ),
        run_details=provenance_pb2.RunDetails(
            builder=provenance_pb2.Builder(
                id=f"urn:locopack:{versions.get('locopack', 'unknown')}",
                version={k: str(v) for k, v in versions.items()},
            ),
            metadata=provenance_pb2.BuildMetadata(invocation_id=last.hash),
        ),
    )
    body = json_format.MessageToDict(predicate)
    build = body["buildDefinition"]
    build["externalParameters"] = {
        "recipe": {"name": last.recipe_name, "sha256": last.recipe_sha256},
        "edits": [edit.to_json() for edit in last.edits],
    }
    build["internalParameters"] = {
        "adapter_tolerance": last.adapter_tolerance,
        "device": last.device,
    }
    statement = Statement(subjects, PREDICATE_TYPE, body)
    statement.validate()
    return json_format.MessageToDict(statement.pb)


def statement_text(statement: dict[str, Any]) -> str:
    """The canonical text of a statement: sorted keys, two-space indent, one final newline."""
    return json.dumps(statement, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def previous_signature_digest(statement: dict[str, Any]) -> str | None:
    """The previous release's signature digest a statement records (None when unsigned or a
    first release, or a statement not shaped as locopack writes one)."""
    try:
        materials = statement["predicate"]["buildDefinition"].get("resolvedDependencies", [])
        found = [m.get("annotations", {}).get(SIGNATURE_DIGEST) for m in materials]
    except (KeyError, TypeError, AttributeError):
        return None
    return next((str(digest) for digest in found if digest), None)


def read_statement(folder: Path) -> dict[str, Any] | None:
    """The statement in ``folder`` (None when there is none).

    Raises:
        ValueError: the file is not a JSON in-toto statement.
    """
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        return None
    statement = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(statement, dict) or "predicate" not in statement:
        raise ValueError(f"{PROVENANCE_FILE}: not an in-toto statement")
    return statement


def signature_digest(folder: Path) -> str | None:
    """sha256 of ``folder``'s ``release.sig``; None when it has none."""
    path = folder / SIGNATURE_FILE
    return sha256_file(path) if path.is_file() else None
