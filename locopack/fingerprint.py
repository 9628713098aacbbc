"""Fingerprints of a base model: what an edit, a cache entry or an adapter was made against.

The fingerprint hashes the denoiser's config, the key/value weights of every text-conditioning
site and all text-encoder weights: what determines the states the edit reads and the matrices
it changes.  Hashing every denoiser weight of a multi-GB model would cost seconds per call and
add nothing the edit depends on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from .errors import EditError

if TYPE_CHECKING:
    from pathlib import Path

    from diffusers import DiffusionPipeline

    from .models.base import ModelFamily

#: the float dtypes a model can be loaded in
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _update(digest: hashlib._Hash, name: str, tensor: torch.Tensor, dtype=None) -> None:
    tensor = tensor.detach().to("cpu")
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    tensor = tensor.contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def tensors_sha256(tensors: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> str:
    """SHA-256 over named tensors (names, dtypes, shapes and bytes), in name order; with
    ``dtype``, floating tensors are hashed as cast to it (one tensor at a time)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        _update(digest, name, tensors[name], dtype)
    return digest.hexdigest()


def fingerprints_by_dtype(
    pipe: DiffusionPipeline, family: type[ModelFamily], own: str | None = None
) -> dict[str, str]:
    """The model's fingerprint in its own dtype (``own``, if already known) and, for a float32
    model, as loaded in float16 and bfloat16 (casting float32 weights gives the bytes such a
    load gives), so that an edit made in float32 is recognized on the same base in half
    precision."""
    dtype = getattr(pipe, family.denoiser_attr).dtype
    found = {DTYPE_NAMES.get(dtype, str(dtype)): own or model_fingerprint(pipe, family)}
    if dtype == torch.float32:
        for half in (torch.float16, torch.bfloat16):
            found[DTYPE_NAMES[half]] = model_fingerprint(pipe, family, half)
    return found


def model_fingerprint(
    pipe: DiffusionPipeline, family: type[ModelFamily], dtype: torch.dtype | None = None
) -> str:
    """``sha256:<hex>`` of the denoiser config, site key/value weights and text encoders
    (with ``dtype``: of the weights as cast to it)."""
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
    digest.update(tensors_sha256(tensors, dtype).encode())
    return "sha256:" + digest.hexdigest()


def check_base_model(
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    provenance: Mapping[str, object],
    source: str | Path,
    force: bool,
) -> None:
    """Refuse an edit (described by ``provenance``) made for another base model than ``pipe``.

    Raises:
        EditError: the pipeline's fingerprint is none of those recorded (unless ``force``).
    """
    recorded = provenance.get("base_fingerprint")
    if force or not recorded:
        return
    actual = model_fingerprint(pipe, family)
    by_dtype = provenance.get("base_fingerprints")
    if isinstance(by_dtype, str):  # a neuron file's header holds strings only
        try:
            by_dtype = json.loads(by_dtype)
        except ValueError:
            by_dtype = None
    known = {recorded, *(by_dtype.values() if isinstance(by_dtype, dict) else ())}
    if actual not in known:
        raise EditError(
            f"{source} was made for another base model (recorded fingerprint {recorded[:19]}…, "
            f"this pipeline has {actual[:19]}…); load the base it was made for, or pass "
            "force=True (--force) to apply it anyway"
        )
