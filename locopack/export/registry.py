"""The registry of export formats: one :class:`ExportFormat` per format, registered once.

Everything that varies by format reads its entry here, so adding a format means registering
one entry (as peft registers its tuners and mergekit its merge methods):

- the recipe's ``export.<name>`` key and its default (the recipe schema's ``ExportSettings``
  gains one boolean field per entry);
- the ``--<name>`` option of ``locopack export`` and its help;
- the files and folders the format writes for a family (``locopack validate`` lists them);
- whether a family can have it, and why not (a format on by default is then dropped from a
  recipe's exports; one asked for by name is refused before anything is written);
- the writer, called with an :class:`ExportJob`;
- what the card says of a release that holds the format's files (tags, a note, whether it is a
  whole model rather than an adapter).

The built-in formats (adapter, kohya, merged, onnx) are registered in
:mod:`locopack.export.formats`.  Entries are metadata and a function: registering one imports
no model library, so the recipe schema can read the registry cheaply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import ExportError

if TYPE_CHECKING:
    from ..delta import WeightDelta
    from ..models.base import ModelFamily
    from ..models.loaded import LoadedBase

#: what a writer returns: {what: the path it wrote, or a record such as the adapter's manifest}
Written = Mapping[str, object]


@dataclass(frozen=True)
class ExportJob:
    """What a format's writer gets: the delta, the folder to write into, the LoRA settings,
    and the base model the delta was made for (None where no chosen format needs it)."""

    delta: WeightDelta
    out: Path
    family: type[ModelFamily]
    max_rank: int = 64
    energy: float = 0.99999999
    base: LoadedBase | None = None

    def base_model(self) -> LoadedBase:
        """The base model, which a format that ``needs_base`` writes from.

        Raises:
            ExportError: no base was given.
        """
        if self.base is None:
            raise no_base(["this"])
        return self.base


class AskedFormats(Protocol):
    """A recipe's ``export`` section as the registry reads it (the recipe schema's
    ``ExportSettings``): the LoRA settings and {format name: asked for}."""

    max_rank: int
    energy: float

    def asked(self) -> dict[str, bool]: ...


def no_base(names: list[str]) -> ExportError:
    """The refusal of formats that need the base model (``names``) where none was given."""
    return ExportError(f"a {' or '.join(names)} export needs the base model the delta was made for")


def _always(family: type[ModelFamily]) -> str | None:
    return None


@dataclass(frozen=True)
class ExportFormat:
    """One export format: how a recipe and the CLI ask for it, what it writes, and for whom.

    Attributes:
        name: the recipe's ``export.<name>`` key and the export command's ``--<name>``.
        help: the option's help text.
        write: the writer: writes the format into ``job.out``, returns {what: path or record}.
        files: the files and folders (``name/``) it writes for a family (None: not known).
        default: whether a recipe exports it unless told otherwise; a format on by default
            is dropped, not refused, for a family that cannot have it.
        required: why every release carries it, where it does (the recipe may not turn it
            off); the export command then offers ``--<name>/--no-<name>``, on by default.
        refusal: why a family cannot have the format, or None where it can.
        instead: what to do instead, added to a refusal (``export without <name>`` first).
        only_for: the bases that can have it, in words, where some cannot (``locopack
            validate`` says so where it cannot tell the base's family).
        needs_base: the writer needs the base pipeline (``job.pipe``).
        check_base: refuses a base the format cannot carry, before anything is written.
        card_tags: the model card's tags for a release holding the format's files.
        card_note: the card's "How to use" line for such a release.
        whole_model: the files are a whole model, not an adapter (the card's base relation
            is then ``finetune``).
    """

    name: str
    help: str
    write: Callable[[ExportJob], Written]
    files: Callable[[type[ModelFamily] | None], list[str]]
    default: bool = False
    required: str = ""
    refusal: Callable[[type[ModelFamily]], str | None] = _always
    instead: str = ""
    only_for: str = ""
    needs_base: bool = False
    check_base: Callable[[LoadedBase], None] | None = None
    card_tags: tuple[str, ...] = ()
    card_note: str = ""
    whole_model: bool = False

    def refuse(self, family: type[ModelFamily]) -> None:
        """Raise when ``family`` cannot have this format.

        Raises:
            ExportError: naming the format, the family and what to do; nothing is written.
        """
        why = self.refusal(family)
        if why:
            raise ExportError(
                f"{self.name} format: {why}; nothing was written: export without "
                f"{self.name}{self.instead}"
            )

    def present_in(self, folder: Path, family: type[ModelFamily] | None = None) -> bool:
        """Whether ``folder`` holds every file this format writes (for ``family``)."""
        names = self.files(family)
        return bool(names) and all((folder / name.rstrip("/")).exists() for name in names)


_REGISTRY: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    """Add ``fmt`` to the registry (after those registered before it) and return it.

    Raises:
        ValueError: the name is taken, or is not a lowercase identifier (it becomes a recipe
            key and a CLI option).
    """
    if not fmt.name.isidentifier() or fmt.name != fmt.name.lower():
        raise ValueError(f"export format {fmt.name!r}: expected a lowercase identifier")
    if fmt.name in _REGISTRY or fmt.name in ("max_rank", "energy"):
        raise ValueError(f"export format {fmt.name!r} is already registered")
    _REGISTRY[fmt.name] = fmt
    return fmt


def unregister_format(name: str) -> None:
    """Remove the format ``name`` (a plug-in's, e.g. when a test is done with it)."""
    _REGISTRY.pop(name, None)


def export_formats() -> list[ExportFormat]:
    """Every registered format, in the order they are written."""
    return list(_REGISTRY.values())


def get_format(name: str) -> ExportFormat:
    """The format registered as ``name``.

    Raises:
        ExportError: no such format; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(_REGISTRY)
        raise ExportError(f"no export format {name!r}; the registered ones are {known}") from None
