"""The merged checkpoint: the full pipeline folder with ΔW added to the edited weights.

The delta is added in place to the loaded pipeline, the pipeline is saved with
``save_pretrained`` (safetensors, the dtype it was loaded in) into a temporary folder that is
renamed into place, and the edited tensors are then restored bit for bit from a copy of just
those tensors, so at no point do two copies of the model exist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..delta import WeightDelta
from ..filenames import MERGE_FILE
from ..storage import atomic_dir
from .records import MergeRecord

if TYPE_CHECKING:
    from ..models.loaded import LoadedBase


def write_merged(base: LoadedBase, delta: WeightDelta, out: Path) -> Path:
    """Save ``base``'s pipeline with ``delta`` merged into ``out`` (atomically); the pipeline
    is unchanged after.

    Returns:
        ``out``, a folder ``DiffusionPipeline.from_pretrained`` loads.
    """
    family = base.family
    with delta.applied(base.denoiser), atomic_dir(out) as tmp:
        base.pipe.save_pretrained(str(tmp), safe_serialization=True)
        MergeRecord(
            delta_sha256=delta.sha256(),
            edited_tensors=sorted(f"{family.denoiser_attr}.{p}.weight" for p in delta.deltas),
            provenance=delta.provenance,
        ).write(tmp / MERGE_FILE)
        _forget_source_paths(tmp)
    return out


def _forget_source_paths(folder: Path) -> None:
    """Drop ``_name_or_path`` (the folder the base was loaded from, a path of this machine)
    from the saved configs: a released checkpoint names no local folder."""
    for path in folder.rglob("*.json"):
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(config, dict) and "_name_or_path" in config:
            del config["_name_or_path"]
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
