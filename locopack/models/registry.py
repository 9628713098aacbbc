"""The registry of supported model families and how a model is matched to one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelLayoutError
from .base import ModelFamily
from .chroma import Chroma
from .deepfloyd_if import DeepFloydIF
from .flux import Flux
from .flux2 import Flux2
from .lumina2 import Lumina2
from .pixart import PixArt
from .qwen_image import QwenImage
from .sana import Sana
from .sd1 import StableDiffusion1
from .sd2 import StableDiffusion2
from .sd3 import StableDiffusion3
from .sdxl import StableDiffusionXL
from .z_image import ZImage

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: Every supported family by registry name, in the order they are tried.
FAMILIES: dict[str, type[ModelFamily]] = {
    family.name: family
    for family in (
        StableDiffusion1,
        StableDiffusion2,
        StableDiffusionXL,
        DeepFloydIF,
        PixArt,
        StableDiffusion3,
        Flux,
        Flux2,
        ZImage,
        Lumina2,
        Sana,
        Chroma,
        QwenImage,
    )
}


def supported_summary() -> str:
    """One line naming every supported family and its pipeline classes."""
    return "; ".join(
        f"{f.pretty_name} ({', '.join(f.pipeline_classes)})" for f in FAMILIES.values()
    )


def get_family(name: str) -> type[ModelFamily]:
    """The family registered as ``name``."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelLayoutError(
            f"unknown model family {name!r}; known: {', '.join(FAMILIES)}"
        ) from None


def family_for(pipeline_class: str, denoiser_config: dict[str, object]) -> type[ModelFamily]:
    """The family of a pipeline class with the given denoiser config.

    Raises:
        ModelLayoutError: no supported family matches; the message lists the supported ones.
    """
    for family in FAMILIES.values():
        if family.matches(pipeline_class, denoiser_config):
            return family
    raise ModelLayoutError(
        f"unsupported pipeline {pipeline_class!r}; locopack supports: {supported_summary()}"
    )


def detect_family(pipe: DiffusionPipeline) -> type[ModelFamily]:
    """The family of a loaded diffusers pipeline."""
    for attr in ("unet", "transformer"):
        denoiser = getattr(pipe, attr, None)
        if denoiser is not None:
            return family_for(type(pipe).__name__, dict(denoiser.config))
    raise ModelLayoutError(
        f"pipeline {type(pipe).__name__!r} has no unet or transformer; "
        f"locopack supports: {supported_summary()}"
    )
