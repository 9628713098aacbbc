"""Stable Diffusion 2.x.

Same block layout as 1.x, but the UNet reads OpenCLIP ViT-H states (1024-d) and its
transformers use linear projections; that flag is how the family is told apart from 1.x.
"""

from __future__ import annotations

from typing import ClassVar

from .sd1 import StableDiffusion1


class StableDiffusion2(StableDiffusion1):
    """Stable Diffusion 2.x: one OpenCLIP text encoder, ``attn2.to_k``/``to_v`` sites."""

    name: ClassVar[str] = "sd2"
    pretty_name: ClassVar[str] = "Stable Diffusion 2.x"
    kohya_metadata: ClassVar[dict[str, str] | None] = {
        "ss_base_model_version": "sd_v2",
        "ss_v2": "True",
    }
    text_hidden: ClassVar[int] = 48
    text_act: ClassVar[str] = "gelu"

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/stabilityai/stable-diffusion-2-1"

    @classmethod
    def matches(cls, pipeline_class: str, denoiser_config: dict[str, object]) -> bool:
        return pipeline_class in cls.pipeline_classes and bool(
            denoiser_config.get("use_linear_projection", False)
        )

    @classmethod
    def unet_kwargs(cls) -> dict[str, object]:
        return {
            **super().unet_kwargs(),
            "attention_head_dim": (2, 4, 8, 8),
            "use_linear_projection": True,
        }
