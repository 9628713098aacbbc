"""The edit as a LoRA adapter: diffusers/PEFT layout and the kohya layout.

Each ΔW is factored by a truncated SVD, ΔW ≈ B A with B = U√S and A = √S Vᵀ (the LoRA
``lora_B``/``lora_A``).  The rank of each module is the smallest that keeps ``energy`` of
ΔW's squared Frobenius norm (so the relative error is at most √(1 − energy)), capped at
``max_rank``; singular values below ``1e-7`` of the largest count as zero.  LocoEdit's ΔW has
rank at most the number of edit tokens, so the adapter is usually exact to float precision.

alpha = rank for every module (scale 1), written as PEFT's ``rank_pattern``/``alpha_pattern``
in the ``lora_adapter_metadata`` header that diffusers' ``load_lora_weights`` reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..delta import WeightDelta
from ..delta_record import DeltaProvenance
from ..errors import ExportError
from ..filenames import ADAPTER_FILE, KOHYA_FILE, MANIFEST_FILE
from ..record import JsonObject
from ..storage import header_json, load_tensors, save_tensors
from .records import LoraManifest, ManifestModule

_NOISE = 1e-7


@dataclass
class LoraModule:
    """One module's factors (``down`` = A, r x in; ``up`` = B, out x r) and their error."""

    down: torch.Tensor
    up: torch.Tensor
    relative_error: float

    @property
    def rank(self) -> int:
        """The LoRA rank r."""
        return self.down.shape[0]


def factorize(delta: torch.Tensor, max_rank: int, energy: float) -> LoraModule:
    """Truncated SVD of one ΔW, rank chosen by the energy threshold and ``max_rank``."""
    d = delta.detach().to(torch.float64)
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    significant = int((s > s[0] * _NOISE).sum()) if s.numel() and s[0] > 0 else 0
    power = s[:significant] ** 2
    kept = torch.cumsum(power, 0) / power.sum() if significant else power
    rank = int((kept < energy - 1e-15).sum()) + 1 if significant else 1
    rank = max(1, min(rank, significant or 1, max_rank))
    root = s[:rank].sqrt()
    up, down = u[:, :rank] * root, root[:, None] * vh[:rank]
    norm = d.norm()
    error = float((d - up @ down).norm() / norm) if norm > 0 else 0.0
    return LoraModule(down.to(torch.float32), up.to(torch.float32), error)


def factorize_delta(delta: WeightDelta, max_rank: int, energy: float) -> dict[str, LoraModule]:
    """Factor every module of ``delta``."""
    return {path: factorize(d, max_rank, energy) for path, d in delta.deltas.items()}


def peft_config(modules: dict[str, LoraModule]) -> JsonObject:
    """PEFT ``LoraConfig`` as a dict: the most common rank as ``r``, the others as patterns."""
    from collections import Counter

    from peft import LoraConfig

    ranks = {path: m.rank for path, m in modules.items()}
    common = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {path: r for path, r in ranks.items() if r != common}
    config = LoraConfig(
        r=common,
        lora_alpha=common,
        target_modules=sorted(ranks),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
        init_lora_weights=False,
    ).to_dict()
    return json.loads(
        json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
    )


def write_adapter(delta: WeightDelta, out: Path, max_rank: int, energy: float) -> LoraManifest:
    """Write ``pytorch_lora_weights.safetensors`` (diffusers keys) and ``lora_manifest.json``.

    Returns:
        The manifest: per module rank and relative reconstruction error, plus provenance.
    """
    modules = factorize_delta(delta, max_rank, energy)
    prefix = delta.denoiser
    tensors = {}
    for path, module in modules.items():
        tensors[f"{prefix}.{path}.lora_A.weight"] = module.down
        tensors[f"{prefix}.{path}.lora_B.weight"] = module.up
    config = peft_config(modules)
    packed = {f"{prefix}.{key}": value for key, value in config.items()}
    metadata = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True),
        "locopack": delta.provenance.header(),
        "locopack_delta_sha256": delta.sha256(),
    }
    save_tensors(tensors, out / ADAPTER_FILE, metadata)
    manifest = LoraManifest(
        adapter_file=ADAPTER_FILE,
        denoiser=prefix,
        max_rank=max_rank,
        energy=energy,
        delta_sha256=delta.sha256(),
        modules={
            path: ManifestModule(
                rank=m.rank, relative_error=m.relative_error, shape=list(delta.deltas[path].shape)
            )
            for path, m in modules.items()
        },
        max_relative_error=max((m.relative_error for m in modules.values()), default=0.0),
        provenance=delta.provenance,
    )
    manifest.write(out / MANIFEST_FILE)
    return manifest


def kohya_key(path: str) -> str:
    """kohya's name of a UNet module: ``lora_unet_`` + the diffusers path with ``_`` for ``.``."""
    return "lora_unet_" + path.replace(".", "_")


def write_kohya(delta: WeightDelta, out: Path, max_rank: int, energy: float) -> Path:
    """Write the kohya-format file ComfyUI and AUTOMATIC1111 load (UNet families only)."""
    from ..models import get_family

    header = get_family(str(delta.provenance.family)).kohya_metadata
    if header is None:
        raise ExportError(
            f"kohya LoRA files exist for Stable Diffusion UNets only; this edit is for the "
            f"{delta.provenance.family} family: use the diffusers/PEFT adapter instead"
        )
    tensors = {}
    for path, module in factorize_delta(delta, max_rank, energy).items():
        key = kohya_key(path)
        tensors[f"{key}.lora_down.weight"] = module.down
        tensors[f"{key}.lora_up.weight"] = module.up
        tensors[f"{key}.alpha"] = torch.tensor(float(module.rank))
    metadata = {"format": "pt", **header, "locopack": delta.provenance.header()}
    return save_tensors(tensors, out / KOHYA_FILE, metadata)


def read_adapter(path: Path) -> tuple[dict[str, torch.Tensor], DeltaProvenance, JsonObject]:
    """The adapter's tensors, its locopack provenance and its packed PEFT config.

    Raises:
        ExportError: unreadable file, or not a locopack adapter.
    """
    tensors, metadata = load_tensors(path)
    if "locopack" not in metadata:
        raise ExportError(f"{path}: a safetensors file without locopack provenance")
    packed = header_json(path, metadata, "lora_adapter_metadata")
    provenance = DeltaProvenance.parse(header_json(path, metadata, "locopack"), str(path))
    return tensors, provenance, packed
