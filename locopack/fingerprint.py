"""Fingerprints of a base model: what an edit, a cache entry or an adapter was made against.

The fingerprint hashes the denoiser's config, the key/value weights of every text-conditioning
site and all text-encoder weights: what determines the states the edit reads and the matrices
it changes.  Hashing every denoiser weight of a multi-GB model would cost seconds per call and
add nothing the edit depends on.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def _update(digest: hashlib._Hash, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over named tensors (names, dtypes, shapes and bytes), in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        _update(digest, name, tensors[name])
    return digest.hexdigest()


def model_fingerprint(pipe: Any, family: Any) -> str:
    """``sha256:<hex>`` of the denoiser config, site key/value weights and text encoders."""
    denoiser = getattr(pipe, family.denoiser_attr)
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(denoiser.config).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    tensors = {}
    for site in family.sites(denoiser):
        for path in (site.key, site.value):
            tensors[f"{family.denoiser_attr}.{path}.weight"] = denoiser.get_submodule(path).weight
    for attr in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, attr, None)
        if encoder is not None:
            tensors.update({f"{attr}.{k}": v for k, v in encoder.state_dict().items()})
    digest.update(tensors_sha256(tensors).encode())
    return "sha256:" + digest.hexdigest()
