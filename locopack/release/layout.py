"""What a release folder is: the name of every file and folder in it, and the one rule for
which files belong to it.

A release folder holds the recipe's source text, the localization result, the weight delta
and its edit report, the exported adapter(s) and optional merged/ONNX checkpoints, the
before/after evidence, the model card and the hash-chained history.  The card, the history,
the Hub push and the audit all take the files of a release from :func:`release_files`, so
they can never disagree about what was released.

A release folder holds regular files and folders only.  A symbolic link in it could point
anywhere (a secret beside the folder, a folder elsewhere that a build would write into), so
:func:`release_files` never lists one nor looks inside a linked folder, :func:`refuse_links`
stops every command that writes into the folder, and the audit fails on one.  The folder
itself may be a link the user named: only what lies inside it is checked.  The one exception
is a snapshot of the Hub client's cache, whose files are its links into its own blob store
(``snapshot=True``; only the audit of a downloaded release reads one).

The names themselves are defined in :mod:`locopack.filenames` (the core packages write some
of these files) and re-exported here; the release side imports every name from this module.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExportError
from ..filenames import (
    ADAPTER_FILE,
    CACHE_DIR,
    CARD_FILE,
    DELTA_FILE,
    EDIT_FILE,
    EVIDENCE_DIR,
    EVIDENCE_FILE,
    HISTORY_FILE,
    KOHYA_FILE,
    LOCALIZATION_FILE,
    LOCALIZATION_PLOT,
    MANIFEST_FILE,
    MERGE_FILE,
    MERGED_DIR,
    NEURON_FILE,
    ONNX_DIR,
    PIPELINE_INDEX,
    PROVENANCE_FILE,
    RECIPE_FILE,
    SIGNATURE_FILE,
)
from ..hub_ref import is_hub_id

if TYPE_CHECKING:
    from ..delta_record import RecordedBase
    from ..models.loaded import LoadedBase
    from ..recipe.schema import Recipe

__all__ = [
    "ADAPTER_FILE",
    "CACHE_DIR",
    "CARD_FILE",
    "DELTA_FILE",
    "EDIT_FILE",
    "EVIDENCE_DIR",
    "EVIDENCE_FILE",
    "HISTORY_FILE",
    "KOHYA_FILE",
    "LOCALIZATION_FILE",
    "LOCALIZATION_PLOT",
    "MANIFEST_FILE",
    "MERGED_DIR",
    "MERGE_FILE",
    "NEURON_FILE",
    "ONNX_DIR",
    "PIPELINE_INDEX",
    "PROVENANCE_FILE",
    "RECIPE_FILE",
    "SIGNATURE_FILE",
    "base_location",
    "hashed_files",
    "is_local_only",
    "is_record",
    "links",
    "locate",
    "recorded_base",
    "refuse_links",
    "relative_location",
    "release_files",
    "release_recipe",
    "sha256_file",
]


def is_local_only(relative: Path) -> bool:
    """True for what stays on the build machine: the sweep cache and hidden files or folders
    (among them the temporary siblings of an interrupted atomic write)."""
    parts = relative.parts
    return not parts or parts[0] == CACHE_DIR or any(p.startswith(".") for p in parts)


def is_record(name: str) -> bool:
    """True for the files that record the others and so cannot be recorded themselves: the
    history (and its copy in ``merged/``), written after every other file, and the provenance
    and signature that a signed release adds after its history (see
    :mod:`locopack.release.attest`)."""
    return Path(name).name == HISTORY_FILE or name in (PROVENANCE_FILE, SIGNATURE_FILE)


def _walk(folder: Path) -> Iterator[Path]:
    """Every path under ``folder``, never looking inside a linked folder."""
    for root, dirs, files in os.walk(folder):  # os.walk lists a linked folder, never enters it
        for name in dirs + files:
            yield Path(root, name)


def release_files(folder: Path, *, snapshot: bool = False) -> list[str]:
    """Every file of the release in ``folder``: posix paths relative to it, sorted.

    This is what a push uploads, what the history hashes (less the history files themselves),
    what the card lists (less the card and the history) and what the audit expects.  Regular
    files only: links are never part of a release (see the module docstring), unless
    ``snapshot`` says ``folder`` is a snapshot of the Hub client's cache.
    """
    found = []
    for path in _walk(folder):
        relative = path.relative_to(folder)
        regular = path.is_file() and (snapshot or not path.is_symlink())
        if regular and not is_local_only(relative):
            found.append(relative)
    return [path.as_posix() for path in sorted(found)]


def links(folder: Path) -> dict[str, str]:
    """{relative posix path: where it points} of every symbolic link inside ``folder``,
    whether or not it belongs to the release (the ``cache/`` too)."""
    return {
        path.relative_to(folder).as_posix(): os.readlink(path)
        for path in sorted(_walk(folder))
        if path.is_symlink()
    }


def refuse_links(folder: Path) -> None:
    """Raise when ``folder`` holds a symbolic link (nothing may be written into it then).

    Raises:
        ExportError: naming the links and their targets.
    """
    found = links(folder) if folder.is_dir() else {}
    if found:
        shown = ", ".join(f"{name} -> {target}" for name, target in list(found.items())[:5])
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        raise ExportError(
            f"{folder}: holds symbolic links ({shown}{more}); a release folder holds regular "
            "files and folders only, and locopack never writes through a link: replace each "
            "with the file or folder itself, or remove it"
        )


def hashed_files(folder: Path, *, snapshot: bool = False) -> dict[str, str]:
    """{relative path: sha256} of the release's files except the records (:func:`is_record`),
    which cannot contain their own hashes (``snapshot``: see :func:`release_files`)."""
    return {
        name: sha256_file(folder / name)
        for name in release_files(folder, snapshot=snapshot)
        if not is_record(name)
    }


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def relative_location(ref: str, folder: Path) -> str | None:
    """Where the local folder ``ref`` is, relative to ``folder`` (posix), as a public release
    may record it; any other reference (a Hub id) unchanged.

    None when the two share no folder below the file system's root or the folder that holds
    the home folders: the relative path would then spell out this machine's layout (``../../
    home/USER/...``), which no public file may carry.
    """
    if not Path(ref).is_dir():
        return ref
    target, here = Path(ref).resolve(), Path(folder).resolve()
    common = Path(os.path.commonpath([target, here]))
    if common in (Path(common.anchor), Path.home().parent):
        return None
    return Path(os.path.relpath(target, here)).as_posix()


def base_location(base: LoadedBase, folder: Path) -> str | None:
    """Where ``base`` is, as a release in ``folder`` records it: a local base's path relative
    to ``folder`` (see :func:`relative_location`), or the Hub repo id."""
    return base.hub_id or relative_location(base.source, Path(folder))


def locate(folder: Path, *refs: str | None) -> str | None:
    """The first of ``refs`` (recorded locations relative to the release ``folder``, or
    references as a recipe wrote them) that names a folder here, else the first that is a Hub
    id; None when none does (e.g. a release copied away from its base)."""
    texts = [ref for ref in refs if isinstance(ref, str) and ref]
    for ref in texts:
        if (folder / ref).is_dir():  # an absolute ref stays itself
            return str(folder / ref)
    return next((ref for ref in texts if is_hub_id(ref)), None)


def recorded_base(record: RecordedBase, folder: Path) -> str | None:
    """The base a delta or history entry records, as a folder or Hub id usable here (see
    :func:`locate`)."""
    legacy = record.base_path  # releases of locopack 0.1
    return locate(folder, record.base_location or legacy, record.base_model)


def release_recipe(folder: Path, known: Recipe | None = None) -> Recipe:
    """The recipe of the release in ``folder``: ``known`` where it is the one the folder's
    ``recipe.yaml`` holds (the command that built or pushes it has read it already; a recipe is
    parsed once per command), else ``recipe.yaml`` read and validated.

    Raises:
        RecipeError: the folder's recipe is invalid (or missing: an OSError's message).
    """
    path = Path(folder) / RECIPE_FILE
    if known is not None and path.read_bytes() == known.source_text.encode("utf-8"):
        return known
    from ..recipe.schema import load_recipe

    return load_recipe(path)
