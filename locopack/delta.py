"""WeightDelta: the edit as {module path: ΔW} plus its provenance.

It is the single hand-off from editing to export, model card and history: saved as one
safetensors file whose header carries the provenance as JSON under the key ``locopack``.  A
delta solved with continuous rows (robust erase's, :mod:`locopack.state_rows`) stores them in
the same file, so that the solve can be repeated from it alone.
Module paths are relative to the denoiser (``unet`` or ``transformer``, named in provenance).
The provenance holds no time: the same recipe, base and versions give the same bytes (the
build's time is in the history entry).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .delta_record import DeltaProvenance, DeltaRecord
from .errors import EditError
from .fingerprint import tensors_sha256
from .state_rows import StateRows
from .storage import load_tensors, save_tensors


def library_versions() -> dict[str, str]:
    """Versions of locopack and the libraries an edit depends on."""
    import diffusers
    import transformers

    from .version import __version__

    return {
        "locopack": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


@dataclass
class WeightDelta:
    """ΔW per edited projection (float32, shape out x in) and where it came from.

    ``provenance`` (a :class:`~locopack.delta_record.DeltaProvenance`; a dict is validated
    into one) names the recipe, base, family, sites, settings and versions.  ``rows``: the
    continuous rows it was solved with, if any (not part of :meth:`sha256`: they change no
    weight by themselves).
    """

    deltas: dict[str, torch.Tensor]
    provenance: DeltaProvenance = field(default_factory=DeltaProvenance)
    rows: StateRows | None = None

    def __post_init__(self) -> None:
        if isinstance(self.provenance, dict):
            self.provenance = DeltaProvenance.parse(self.provenance, "the delta's provenance")
        for path, delta in self.deltas.items():
            if delta.ndim != 2:
                raise EditError(f"delta of {path} must be a matrix, got shape {tuple(delta.shape)}")
            if not torch.isfinite(delta).all():
                raise EditError(
                    f"delta of {path} contains NaN or Inf; the edit is ill-conditioned "
                    "(raise edit.lambda or check the prompts)"
                )

    @property
    def sites(self) -> list[str] | None:
        """The edited sites the provenance names; None when it names none (a damaged header)."""
        return self.provenance.sites or None

    @property
    def denoiser(self) -> str:
        """Attribute of the pipeline the module paths live in (``unet`` or ``transformer``)."""
        return self.provenance.denoiser

    def sha256(self) -> str:
        """Hash of the tensors alone (independent of file metadata)."""
        return "sha256:" + tensors_sha256(self.deltas)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically as safetensors (float32) with provenance in the header."""
        metadata = DeltaRecord(locopack=self.provenance).metadata()
        tensors = {k: v.detach().to(torch.float32).cpu() for k, v in self.deltas.items()}
        if self.rows is not None:
            tensors |= self.rows.tensors()
        return save_tensors(tensors, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> WeightDelta:
        """Read a delta written by :meth:`save`.

        Raises:
            ExportError: not a readable safetensors file, or not a locopack delta.
            EditError: its state rows are incomplete or malformed.
        """
        tensors, metadata = load_tensors(path)
        record = DeltaRecord.from_metadata(metadata, str(path))
        rows = StateRows.from_tensors(tensors, str(path))
        return cls(tensors, record.locopack, rows)

    @contextlib.contextmanager
    def applied(self, denoiser: torch.nn.Module, scale: float = 1.0) -> Iterator[None]:
        """Within the block ``denoiser`` carries the edit; afterwards the edited weights are
        restored bit for bit from a copy of just those tensors (not the whole model)."""
        saved = {p: denoiser.get_submodule(p).weight.detach().clone() for p in self.deltas}
        try:
            self.apply(denoiser, scale)
            yield
        finally:
            with torch.no_grad():
                for path, weight in saved.items():
                    denoiser.get_submodule(path).weight.copy_(weight)

    def apply(self, denoiser: torch.nn.Module, scale: float = 1.0) -> None:
        """Add ``scale * ΔW`` to the denoiser's weights in place (in their dtype)."""
        for path, delta in self.deltas.items():
            try:
                module = denoiser.get_submodule(path)
            except AttributeError:
                raise EditError(f"the model has no module {path!r} that this delta edits") from None
            weight = module.weight
            if tuple(weight.shape) != tuple(delta.shape):
                raise EditError(
                    f"{path}: delta shape {tuple(delta.shape)} does not match the weight "
                    f"{tuple(weight.shape)}"
                )
            with torch.no_grad():
                merged = weight.to(torch.float32) + scale * delta.to(weight.device, torch.float32)
                weight.copy_(merged.to(weight.dtype))
