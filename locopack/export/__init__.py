"""Exports of a WeightDelta: LoRA adapter (diffusers/PEFT, kohya), merged checkpoint, ONNX."""

from .lora import ADAPTER_FILE, KOHYA_FILE, MANIFEST_FILE, factorize, write_adapter, write_kohya
from .merged import write_merged

__all__ = [
    "ADAPTER_FILE",
    "KOHYA_FILE",
    "MANIFEST_FILE",
    "factorize",
    "write_adapter",
    "write_kohya",
    "write_merged",
]
