"""Exports of a WeightDelta: LoRA adapter (diffusers/PEFT, kohya), merged checkpoint, ONNX.

The formats are registered in :mod:`.formats` (the registry is :mod:`.registry`).  The names
below are re-exported lazily, so that reading the registry (as the recipe schema does) does
not import torch with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "ADAPTER_FILE": "locopack.filenames",
    "KOHYA_FILE": "locopack.filenames",
    "MANIFEST_FILE": "locopack.filenames",
    "factorize": "locopack.export.lora",
    "write_adapter": "locopack.export.lora",
    "write_kohya": "locopack.export.lora",
    "write_merged": "locopack.export.merged",
}

__all__ = [
    "ADAPTER_FILE",
    "KOHYA_FILE",
    "MANIFEST_FILE",
    "factorize",
    "write_adapter",
    "write_kohya",
    "write_merged",
]

if TYPE_CHECKING:
    from locopack.export.lora import factorize, write_adapter, write_kohya
    from locopack.export.merged import write_merged
    from locopack.filenames import ADAPTER_FILE, KOHYA_FILE, MANIFEST_FILE


def __getattr__(name: str) -> object:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
