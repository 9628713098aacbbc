"""Which export formats a delta gets, and the files each one writes: decided here once, for
``locopack build`` and ``locopack export`` (which write them, :mod:`locopack.pipeline.exports`)
and ``locopack validate`` (which lists them, :func:`locopack.recipe.review.summarize`).

A format a family cannot have is dropped from a recipe's exports (kohya, on by default, exists
for the Stable Diffusion UNets only) and refused, before anything is written, where it is asked
for by name (:meth:`ExportChoice.check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ExportError
from ..filenames import ADAPTER_FILE, KOHYA_FILE, MANIFEST_FILE, MERGED_DIR, ONNX_DIR

if TYPE_CHECKING:
    from ..models.base import ModelFamily
    from ..recipe.schema import ExportSettings

FORMATS = ("adapter", "kohya", "merged", "onnx")


def no_kohya(family: type[ModelFamily]) -> str | None:
    """Why ``family`` gets no kohya file, or None where it does."""
    if family.kohya_metadata is not None:
        return None
    return (
        f"kohya LoRA files exist for Stable Diffusion UNets only, not for "
        f"{family.pretty_name} ({family.name})"
    )


@dataclass(frozen=True)
class ExportChoice:
    """What to export from a delta: the adapter always, and any of kohya, merged, ONNX."""

    max_rank: int = 64
    energy: float = 0.99999999
    adapter: bool = True
    kohya: bool = False
    merged: bool = False
    onnx: bool = False

    @classmethod
    def from_recipe(
        cls, settings: ExportSettings, family: type[ModelFamily] | None
    ) -> ExportChoice:
        """The recipe's ``export`` section for a base of ``family``: ``kohya`` (on by default)
        only where kohya files exist for the family (kept as asked where the family is not
        known, None)."""
        kohya = settings.kohya and (family is None or no_kohya(family) is None)
        return cls(
            settings.max_rank,
            settings.energy,
            settings.adapter,
            kohya,
            settings.merged,
            settings.onnx,
        )

    def formats(self) -> list[str]:
        """The chosen formats, in the order they are written."""
        return [name for name in FORMATS if getattr(self, name)]

    def files(self, family: type[ModelFamily] | None) -> list[str]:
        """The files and folders (``name/``) the chosen formats write for ``family`` (the
        ONNX folder without its denoiser's subfolder where the family is not known)."""
        denoiser = f"{family.denoiser_attr}/" if family else ""
        names = {
            "adapter": [ADAPTER_FILE, MANIFEST_FILE],
            "kohya": [KOHYA_FILE],
            "merged": [f"{MERGED_DIR}/"],
            "onnx": [f"{ONNX_DIR}/{denoiser}"],
        }
        return [name for fmt in self.formats() for name in names[fmt]]

    def check(self, family: type[ModelFamily]) -> None:
        """Refuse, before anything is written, a format ``family`` cannot have.

        Raises:
            ExportError: naming the format, the family and what to do.
        """
        why = no_kohya(family) if self.kohya else None
        if why:
            raise ExportError(
                f"kohya format: {why}; nothing was written: export without kohya (the "
                "diffusers/PEFT adapter is this family's LoRA format)"
            )
        if self.onnx and family.onnx_refusal:
            raise ExportError(
                f"onnx format: no ONNX export for {family.pretty_name} ({family.name}): "
                f"{family.onnx_refusal}; nothing was written: export without onnx"
            )
