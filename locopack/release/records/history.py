"""``history.jsonl``: one :class:`HistoryEntry` per line (see :mod:`locopack.record` and
:mod:`locopack.release.history`, which builds and checks the chain).

An entry's ``hash`` covers its JSON exactly as written, so an entry is dumped with the keys it
was read with and no others: an entry of an older version (a ``base_path``, no ``scorer_location``)
keeps its hash when read and checked by this version.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pydantic import Field

from ...delta_record import RecordedBase
from ...errors import ExportError
from ...record import JsonObject, Record, RecordPart
from ...storage import atomic_write_text

__all__ = ["HistoryEdit", "HistoryEntry", "HistoryRequirements", "read_entries", "write_entries"]


class HistoryEdit(RecordPart):
    """One edit of the applied recipe: its kind, label and the targets of its prompts."""

    kind: str
    label: str
    targets: list[str]


class HistoryRequirements(RecordPart):
    """The verdict on the recipe's requirements when it was built, and whether the build was
    told to release it anyway (``--allow-unmet``)."""

    met: bool
    unmet: list[str]
    allowed_unmet: bool = False


class HistoryEntry(Record, RecordedBase):
    """One recipe applied to a model: the recipe (text and hash), the base (as the recipe
    names it, where it is relative to the release or the Hub commit loaded, its fingerprint),
    versions, the hashes of the localization, the delta and every file, the time and seconds
    per stage, and the chain (``prev``: the previous entry's ``hash``)."""

    FORMAT = "locopack.history/1"
    index: int
    time: str | None = None
    seconds: dict[str, float] = Field(default_factory=dict)
    recipe_name: str
    recipe_sha256: str
    recipe_text: str
    edits: list[HistoryEdit] = Field(default_factory=list)
    scorer_location: str | None = None
    device: str | None = None
    localization_sha256: str | None = None
    delta_sha256: str | None = None
    adapter_tolerance: float | None = None
    files: dict[str, str] = Field(default_factory=dict)
    prev: str | None = None
    requirements: HistoryRequirements | None = None
    #: the plugin detectors the recipe ran, allowed by the user (``--allow-code``)
    allowed_code: list[str] | None = None
    hash: str = ""

    def content_hash(self) -> str:
        """SHA-256 of the entry's canonical JSON without its own ``hash`` field."""
        body = {k: v for k, v in self.to_json().items() if k != "hash"}
        blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def line(self) -> str:
        """The entry's line in ``history.jsonl`` (sorted keys, no indent)."""
        return json.dumps(self.to_json(), sort_keys=True, ensure_ascii=False) + "\n"


def read_entries(path: str | os.PathLike) -> list[HistoryEntry]:
    """The entries of a ``history.jsonl`` (an empty list when the file does not exist).

    Raises:
        ExportError: a line is not a JSON object or not a history entry; the message names the
            line and the field.
    """
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ExportError(f"{path}: not a readable UTF-8 text file ({err})") from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            data: JsonObject = json.loads(line)
        except ValueError as err:
            raise ExportError(f"{path}:{number}: not a JSON object ({err})") from None
        if not isinstance(data, dict):
            raise ExportError(f"{path}:{number}: not a JSON object")
        entries.append(HistoryEntry.parse(data, f"{path}:{number}"))
    return entries


def write_entries(path: str | os.PathLike, entries: list[HistoryEntry]) -> Path:
    """Write ``entries`` as ``path`` atomically, one line each."""
    return atomic_write_text(path, "".join(entry.line() for entry in entries))
