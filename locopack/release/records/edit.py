"""``edit.json``: what LocoEdit did (see :mod:`locopack.record`)."""

from __future__ import annotations

from ...record import JsonObject, Record, RecordPart

__all__ = ["EditModule", "EditRecord"]


class EditModule(RecordPart):
    """One edited matrix: the relative error of ``W'x`` against ``W y`` on the edit's columns
    (``error_before``: the same for the unedited ``W``), and the relative drift on the preserve
    columns (absent when the edit has none)."""

    edit_error: float
    error_before: float
    preserve_drift: float | None = None


class EditRecord(Record):
    """``edit.json``: the edited sites, the delta's hash, each matrix's errors and, with
    ``edit.robust``, the rounds of the robust erase.  Files written before the record had a
    ``format`` read as version 1."""

    FORMAT = "locopack.edit/1"
    layers: list[str]
    delta_sha256: str
    modules: dict[str, EditModule]
    robust: JsonObject | None = None
