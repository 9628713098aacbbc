"""The history of a model: an append-only, hash-chained record of every recipe applied.

``history.jsonl`` holds one JSON object per applied recipe: the recipe text and hash, the base
model and its fingerprint, library versions, the hashes of the localization result and of the
delta's tensors, the sha256 of every output file, the time, the seconds each stage of the
build took, and the previous entry's hash.  The time and the seconds are kept here only: every
other file of a release holds none, so two builds of the same recipe on the same base with the
same versions give the same bytes, and so does a build resumed after a crash.
Each entry's ``hash`` is the SHA-256 of its canonical JSON without that field, so editing,
reordering or dropping a line breaks the chain.  A recipe whose base is an already edited
merged checkpoint (which carries its own ``history.jsonl``) continues that chain.
"""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HubError
from ..evidence.detectors import is_plugin
from ..record import JsonObject
from .layout import (
    HISTORY_FILE,
    LOCALIZATION_FILE,
    MERGED_DIR,
    base_location,
    hashed_files,
    relative_location,
    sha256_file,
)
from .records.history import (
    HistoryEdit,
    HistoryEntry,
    HistoryRequirements,
    read_entries,
    write_entries,
)

if TYPE_CHECKING:
    from ..delta import WeightDelta
    from ..models.loaded import LoadedBase
    from ..recipe.schema import Recipe


def entry_hash(entry: HistoryEntry) -> str:
    """SHA-256 of an entry's canonical JSON, without its own ``hash`` field."""
    return entry.content_hash()


def read_history(path: Path) -> list[HistoryEntry]:
    """Entries of a ``history.jsonl`` (an empty list when the file does not exist).

    Raises:
        ExportError: a line is not a JSON object or not a history entry; the message names
            the line and the field.
    """
    return read_entries(path)


def prior_history(model: str, revision: str | None = None) -> list[HistoryEntry]:
    """The chain a base model already carries: its ``history.jsonl`` if it has one.

    Raises:
        HubError: the Hub could not say whether a Hub base has a history (other than being
            offline, which is warned about): the chain must not silently restart.
    """
    local = Path(model)
    if local.is_dir():
        return read_history(local / HISTORY_FILE)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

    try:
        path = Path(hf_hub_download(model, HISTORY_FILE, revision=revision))
    except RemoteEntryNotFoundError:  # the base carries no history: the chain starts here
        return []
    except LocalEntryNotFoundError:
        warnings.warn(
            f"could not check whether {model} carries a {HISTORY_FILE} (offline or "
            "unreachable, none cached); this release's history starts with this recipe",
            stacklevel=2,
        )
        return []
    except Exception as err:
        raise HubError(
            f"{model}: cannot read its {HISTORY_FILE} from the Hub ({type(err).__name__}: "
            f"{err}); retry when the Hub answers, so that the history chain continues"
        ) from None
    return read_history(path)


def new_entry(
    recipe: Recipe,
    delta: WeightDelta,
    folder: Path,
    previous: list[HistoryEntry],
    *,
    base: LoadedBase,
    adapter_tolerance: float | None,
    seconds: dict[str, float],
    requirements: JsonObject | None = None,
    allowed_unmet: bool = False,
) -> HistoryEntry:
    """The entry recording ``recipe`` applied to ``base`` (a
    :class:`~locopack.models.LoadedBase`), for the files now in ``folder``, built in
    ``seconds`` per stage (those reused from an interrupted build took about none); with the
    verdict on its ``requirements`` (the evidence's section) and whether the build was told to
    release it anyway (``--allow-unmet``).

    The base is recorded as the recipe names it, plus where it is relative to ``folder`` (a
    local base) or the Hub commit that was loaded: never an absolute local path."""
    localization = folder / LOCALIZATION_FILE
    provenance = delta.provenance
    entry = {
        "format": HistoryEntry.FORMAT,
        "index": len(previous),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": {stage: round(s, 1) for stage, s in seconds.items()},
        "recipe_name": recipe.name,
        "recipe_sha256": recipe.sha256,
        "recipe_text": recipe.source_text,
        "edits": [
            HistoryEdit(
                kind=e.kind, label=e.label, targets=list(dict.fromkeys(e.targets_expanded()))
            )
            for e in recipe.edits
        ],
        "base_model": recipe.base.model,
        "base_revision": recipe.base.revision,
        "base_location": base_location(base, folder),
        "base_commit": base.commit,
        "scorer_location": relative_location(recipe.local_path(recipe.localize.scorer), folder),
        "base_fingerprint": provenance.base_fingerprint,
        "family": provenance.family,
        "versions": provenance.versions,
        "device": getattr(getattr(base.pipe, "device", None), "type", None),
        "localization_sha256": sha256_file(localization) if localization.is_file() else None,
        "delta_sha256": delta.sha256(),
        "adapter_tolerance": adapter_tolerance,
        "files": hashed_files(folder),
        "prev": previous[-1].hash if previous else None,
    }
    if requirements is not None:
        entry["requirements"] = HistoryRequirements(
            met=requirements["met"],
            unmet=requirements["unmet"],
            allowed_unmet=bool(allowed_unmet and not requirements["met"]),
        )
    plugins = [d.name for d in recipe.evidence.detectors if is_plugin(d.name)]
    if plugins:  # code the recipe ran, allowed by the user (--allow-code)
        entry["allowed_code"] = plugins
    made = HistoryEntry(**entry)
    made.hash = made.content_hash()
    return made


def write_history(folder: Path, entries: list[HistoryEntry]) -> Path:
    """Write the chain to ``folder/history.jsonl`` (and into ``merged/`` when present)."""
    if (folder / MERGED_DIR).is_dir():
        write_entries(folder / MERGED_DIR / HISTORY_FILE, entries)
    return write_entries(folder / HISTORY_FILE, entries)
