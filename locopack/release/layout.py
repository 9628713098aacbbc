"""What a release folder is: the name of every file and folder in it, and the one rule for
which files belong to it.

A release folder holds the recipe's source text, the localization result, the weight delta
and its edit report, the exported adapter(s) and optional merged/ONNX checkpoints, the
before/after evidence, the model card and the hash-chained history.  The card, the history,
the Hub push and the audit all take the files of a release from :func:`release_files`, so
they can never disagree about what was released.

The names themselves are defined in :mod:`locopack.filenames` (the core packages write some
of these files) and re-exported here; the release side imports every name from this module.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

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
    RECIPE_FILE,
)
from ..hub_ref import is_hub_id

#: what a build writes, besides the recipe copy and the cache (whose entries are keyed by recipe)
BUILD_OUTPUTS = (
    LOCALIZATION_FILE,
    LOCALIZATION_PLOT,
    DELTA_FILE,
    EDIT_FILE,
    ADAPTER_FILE,
    MANIFEST_FILE,
    KOHYA_FILE,
    MERGED_DIR,
    ONNX_DIR,
    EVIDENCE_DIR,
    EVIDENCE_FILE,
    CARD_FILE,
    HISTORY_FILE,
)

__all__ = [
    "ADAPTER_FILE",
    "BUILD_OUTPUTS",
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
    "RECIPE_FILE",
    "hashed_files",
    "is_local_only",
    "locate",
    "recorded_base",
    "relative_location",
    "release_files",
    "sha256_file",
]


def is_local_only(relative: Path) -> bool:
    """True for what stays on the build machine: the sweep cache and hidden files or folders
    (among them the temporary siblings of an interrupted atomic write)."""
    parts = relative.parts
    return not parts or parts[0] == CACHE_DIR or any(p.startswith(".") for p in parts)


def release_files(folder: Path) -> list[str]:
    """Every file of the release in ``folder``: posix paths relative to it, sorted.

    This is what a push uploads, what the history hashes (less the history files themselves),
    what the card lists (less the card and the history) and what the audit expects.
    """
    found = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if not is_local_only(relative) and path.is_file():
            found.append(relative)
    return [path.as_posix() for path in sorted(found)]


def hashed_files(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of the release's files except the history files, which record
    these hashes and so cannot contain their own."""
    return {
        name: sha256_file(folder / name)
        for name in release_files(folder)
        if Path(name).name != HISTORY_FILE
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


def locate(folder: Path, *refs: Any) -> str | None:
    """The first of ``refs`` (recorded locations relative to the release ``folder``, or
    references as a recipe wrote them) that names a folder here, else the first that is a Hub
    id; None when none does (e.g. a release copied away from its base)."""
    texts = [ref for ref in refs if isinstance(ref, str) and ref]
    for ref in texts:
        if (folder / ref).is_dir():  # an absolute ref stays itself
            return str(folder / ref)
    return next((ref for ref in texts if is_hub_id(ref)), None)


def recorded_base(record: dict[str, Any], folder: Path) -> str | None:
    """The base a delta or history entry records, as a folder or Hub id usable here (see
    :func:`locate`)."""
    legacy = record.get("base_path")  # releases of locopack 0.1
    return locate(folder, record.get("base_location") or legacy, record.get("base_model"))
