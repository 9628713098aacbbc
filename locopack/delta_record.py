"""The record of a weight delta: its provenance, and the ``delta.safetensors`` header.

``delta.safetensors`` carries two header entries: ``format`` (``locopack.weight_delta/1``)
and ``locopack``, the :class:`DeltaProvenance` as JSON.  The same provenance travels in the
adapter's and the kohya file's headers, in ``lora_manifest.json`` and in a merged
checkpoint's ``locopack_merge.json``.  Every field has a default: a delta is also made in code
with only some of them (tests, a stand-in), and files of older versions lack the later ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Self

from pydantic import Field

from .errors import ExportError
from .record import JsonObject, Record, RecordPart, format_version

__all__ = ["DeltaProvenance", "DeltaRecord", "ExtraRow", "RecordedBase"]


class ExtraRow(RecordPart):
    """A ``(prompt, target)`` row the delta was solved with beside the recipe's."""

    prompt: str
    target: str


class RecordedBase(RecordPart):
    """The base model as a delta and a history entry record it: as the recipe names it
    (``base_model``, ``base_revision``), where it is relative to the release or the Hub commit
    that was loaded (``base_location``, ``base_commit``; ``base_path`` in releases of
    locopack 0.1), its fingerprint, family and the library versions."""

    base_model: str | None = None
    base_revision: str | None = None
    base_location: str | None = None
    base_commit: str | None = None
    base_path: str | None = None
    base_fingerprint: str | None = None
    family: str | None = None
    versions: dict[str, str] = Field(default_factory=dict)


class DeltaProvenance(RecordedBase):
    """Where a delta came from: recipe, base, family, sites, settings and versions.

    ``columns`` / ``preserve_columns`` count the edit's and the preserve prompts' columns;
    ``token_rows`` say which positions of which encoder each edit prompt's columns read;
    ``collection`` and ``image_sites`` (joint-attention families) how the inputs were
    collected and which sites also map image tokens; ``extra_rows`` and ``robust`` the rows
    and rounds of a robust erase; the base as :class:`RecordedBase` says (never a local
    absolute path).
    """

    recipe_name: str | None = None
    recipe_sha256: str | None = None
    base_dtype: str | None = None
    base_variant: str | None = None
    #: the base's fingerprint in each dtype it may be loaded in
    base_fingerprints: dict[str, str] | None = None
    denoiser: str = "unet"
    sites: list[str] | None = None
    lam: float | None = Field(default=None, alias="lambda")
    matrices: str | None = None
    tokens: str | None = None
    preserve_weight: float | None = None
    neighbours: list[str] = Field(default_factory=list)
    columns: int | None = None
    preserve_columns: int | None = None
    collection: JsonObject | None = None
    image_sites: list[str] | None = None
    token_rows: list[JsonObject] = Field(default_factory=list)
    extra_rows: list[ExtraRow] = Field(default_factory=list)
    robust: JsonObject | None = None

    def header(self) -> str:
        """The compact JSON written into safetensors headers (sorted keys)."""
        return json.dumps(self.to_json(), sort_keys=True)


class DeltaRecord(Record):
    """The header of ``delta.safetensors``: its ``format`` and the delta's provenance (the
    header entry ``locopack``, JSON inside a string)."""

    FORMAT = "locopack.weight_delta/1"
    locopack: DeltaProvenance

    def metadata(self) -> dict[str, str]:
        """The safetensors header entries."""
        return {"format": self.FORMAT, "locopack": self.locopack.header()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str], where: str) -> Self:
        """The record in a safetensors header read from ``where``.

        Raises:
            ExportError: not a locopack delta, or a provenance that is not a JSON object or
                not valid.
        """
        from .storage import header_json

        name = cls.FORMAT.rpartition("/")[0]
        found = metadata.get("format")
        if found is None or format_version(found, name) is None:
            raise ExportError(
                f"{where}: not a locopack weight delta (header format is {found!r}, expected "
                f"{cls.FORMAT!r})"
            )
        provenance = header_json(where, metadata, "locopack")
        return cls.parse({"format": found, "locopack": provenance}, where)

    @classmethod
    def read(cls, path: str | os.PathLike) -> Self:
        """The record in the header of the safetensors file ``path``."""
        from .storage import load_tensors

        return cls.from_metadata(load_tensors(path)[1], str(path))

    def write(self, path: str | os.PathLike) -> Path:
        """Not a file of its own: :meth:`locopack.delta.WeightDelta.save` writes the header
        (:meth:`metadata`) with the tensors.

        Raises:
            ExportError: always.
        """
        raise ExportError(f"{path}: a delta's header is written with its tensors (WeightDelta)")
