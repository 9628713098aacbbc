"""The recipe's keys that registries define: ``export`` (one boolean per registered export
format, :mod:`locopack.export.registry`) and the names of ``evidence.detectors`` (the
registered detectors, :mod:`locopack.evidence.detectors.registry`, or ``module:callable``).

Both registries hold metadata only, so reading them here imports no model library.  A format
registered after this module was imported becomes a recipe key at the next validation
(:func:`~locopack.recipe.schema.sync_export_formats` calls :func:`set_export_fields`); a
detector registered later is a valid name at once.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from locopack.evidence.detectors.registry import detector_entry, detector_names
from locopack.export.formats import export_formats

_PLUGIN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def _expected(what: str) -> PydanticCustomError:
    return PydanticCustomError("recipe", "expected {what}", {"what": what})


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ExportSettings(_Strict):
    """The recipe's ``export`` section: the LoRA factors' ``max_rank`` and ``energy``, and one
    boolean per registered export format, with the format's default (:func:`set_export_fields`
    adds them)."""

    max_rank: int = Field(64, ge=1)
    energy: float = Field(0.99999999, gt=0, le=1)

    def asked(self) -> dict[str, bool]:
        """{format name: whether this section asks for it}, for every format it has a key for."""
        fields = type(self).model_fields
        return {name: getattr(self, name) for name in fields if name in _FORMATS}


#: the names of the export formats ExportSettings has a field for
_FORMATS: list[str] = []


def exported_formats() -> list[str]:
    """The names of the formats :class:`ExportSettings` has a field for, in order."""
    return list(_FORMATS)


def _required(why: str) -> AfterValidator:
    def check(value: bool) -> bool:
        if not value:
            raise _expected(f"true: {why} (omit the key)")
        return value

    return AfterValidator(check)


def set_export_fields() -> None:
    """Make :class:`ExportSettings`' fields one boolean per registered format (formats first,
    in registry order, with their defaults; then ``max_rank`` and ``energy``).

    The model is rebuilt in place (pydantic's ``model_rebuild``), so the class every module
    imported stays the one that validates; a model that holds it must be rebuilt too.
    """
    formats = export_formats()
    fields = ExportSettings.model_fields
    lora = {name: fields[name] for name in ("max_rank", "energy")}
    fields.clear()
    for fmt in formats:
        annotation = Annotated[bool, _required(fmt.required)] if fmt.required else bool
        fields[fmt.name] = FieldInfo.from_annotated_attribute(annotation, fmt.default)
    fields.update(lora)
    _FORMATS[:] = [f.name for f in formats]
    ExportSettings.model_rebuild(force=True)


set_export_fields()


def _detector_name(value: str) -> str:
    """Accept a registered detector's name or a plug-in's ``module:callable``."""
    if detector_entry(value) is None and not _PLUGIN.fullmatch(value):
        names = ", ".join(detector_names())
        raise _expected(f"a built-in detector ({names}) or 'module:callable'")
    return value


class DetectorSpec(_Strict):
    """A detector of the evidence: a registered name (``clip``, ``toy``, ``toy-deep``,
    ``nudenet``) or ``module:callable``, with keyword ``options``; a bare string is the name
    alone."""

    name: Annotated[str, AfterValidator(_detector_name)]
    options: dict[str, object] = {}

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, value: object) -> object:
        return {"name": value} if isinstance(value, str) else value
