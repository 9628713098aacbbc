"""Records: the JSON files locopack writes, each a pydantic model with a ``format`` version.

A record is read and written through its model only (:meth:`Record.read`,
:meth:`Record.write`), so a file's shape is defined once and every reader uses attributes.
The ``format`` is ``"locopack.<name>/<version>"``.  Reading is strict where it helps users:

* a file of a newer version than this locopack knows is refused, naming the file and the
  version, with what to do (upgrade locopack);
* a key the model does not know is refused, naming the file and the field (a file written by a
  newer locopack, or edited by hand);
* files of the current and every older version read: a field added later has a default, and a
  file written before its record had a ``format`` (``edit.json``) reads as version 1.

The dump keeps exactly the keys the record was given (``exclude_unset``), so an entry whose
hash covers its JSON (the history) keeps it when read and checked; a record written to its
file always carries the ``format`` this version writes.  This module imports no torch and
nothing of the core or the release side, so both may build on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, ClassVar, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    JsonValue,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import ExportError
from .storage import atomic_write_text

__all__ = ["JsonObject", "Record", "RecordPart", "describe_error", "format_version"]


def _plain(value: object) -> object:
    """``value`` as JSON gives it back (tuples become lists), as the writers always did."""
    return json.loads(json.dumps(value))


#: a JSON object whose shape the record leaves open (measured values keyed by name); built in
#: code, its tuples become lists
JsonObject = Annotated[dict[str, JsonValue], BeforeValidator(_plain)]


class RecordPart(BaseModel):
    """A nested part of a record: unknown keys are refused like the record's own."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    def to_json(self) -> JsonObject:
        """The part as JSON data: every key it was given, none it was not."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    @classmethod
    def parse(cls, data: object, where: str) -> Self:
        """Validate JSON ``data`` read from ``where`` (a file, or a file and line).

        Raises:
            ExportError: naming ``where`` and the first field that is wrong.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ExportError(f"{where}: {describe_error(err)}") from None


def format_version(value: str, name: str) -> int | None:
    """The version in ``value`` when it is ``name/<int>``; None when it is another format."""
    head, _, version = value.rpartition("/")
    return int(version) if head == name and version.isdigit() else None


def describe_error(err: ValidationError) -> str:
    """The first problem pydantic found, as ``field 'a.b': what``."""
    first = err.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(the whole file)"
    if first["type"] == "record_format":
        return first["msg"]
    if first["type"] == "extra_forbidden":
        return (
            f"field {where!r}: not a field this locopack knows (written by a newer locopack, "
            "or edited by hand): upgrade locopack, or re-run the build to rewrite the file"
        )
    return (
        f"field {where!r}: {first['msg']}; the file does not hold what locopack writes (edited "
        "by hand?): re-run the stage that writes it"
    )


class Record(RecordPart):
    """Base of every record: its ``format`` and the strict reading described above.

    Subclasses set :attr:`FORMAT` (``"locopack.<name>/<version>"``, the version they write).
    """

    FORMAT: ClassVar[str]
    #: None: a file written before its record had a format (read as version 1)
    format: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_version(cls, data: object) -> object:
        """Refuse another record's format, and a newer version than :attr:`FORMAT`."""
        if not isinstance(data, dict):
            return data
        name, _, current = cls.FORMAT.rpartition("/")
        found = data.get("format") or f"{name}/1"
        version = format_version(found, name) if isinstance(found, str) else None
        if version is None:
            raise PydanticCustomError(
                "record_format",
                "its format is '{found}', expected '{expected}': not this kind of file",
                {"found": found, "expected": cls.FORMAT},
            )
        if version > int(current):
            raise PydanticCustomError(
                "record_format",
                "its format '{found}' was written by a newer locopack (this one reads up to "
                "'{expected}'): upgrade locopack to read it",
                {"found": found, "expected": cls.FORMAT},
            )
        return data

    def text(self) -> str:
        """The file's text: sorted keys, indented by two, one trailing newline; its ``format``
        is the one this version writes (the model it was read through)."""
        data = {**self.to_json(), "format": self.FORMAT}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def read(cls, path: str | os.PathLike) -> Self:
        """Read the record in ``path``.

        Raises:
            ExportError: the file is missing, not JSON, or not this record (names the field).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ExportError(f"{path}: cannot be read ({err})") from None
        try:
            data = json.loads(text)
        except ValueError as err:
            raise ExportError(f"{path}: not valid JSON ({err})") from None
        return cls.parse(data, str(path))

    def write(self, path: str | os.PathLike) -> Path:
        """Write the record to ``path`` atomically."""
        return atomic_write_text(path, self.text())
