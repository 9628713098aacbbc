"""Stable Diffusion 1.x (and its fine-tunes such as OpenJourney).

The UNet reads CLIP ViT-L/14 states (768-d) through the ``attn2`` cross-attention of each
transformer block: 16 sites (6 down, 1 mid, 9 up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from .base import ModelFamily
from .twin_parts import tiny_clip_text, tiny_vae

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class StableDiffusion1(ModelFamily):
    """Stable Diffusion 1.x: one CLIP text encoder, ``attn2.to_k``/``to_v`` sites."""

    name: ClassVar[str] = "sd1"
    pretty_name: ClassVar[str] = "Stable Diffusion 1.x"
    kohya_metadata: ClassVar[dict[str, str] | None] = {"ss_base_model_version": "sd_v1"}
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionPipeline",)
    text_hidden: ClassVar[int] = 32
    text_act: ClassVar[str] = "quick_gelu"

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/CompVis/stable-diffusion-v1-4"

    @classmethod
    def matches(cls, pipeline_class: str, denoiser_config: dict[str, object]) -> bool:
        return pipeline_class in cls.pipeline_classes and not denoiser_config.get(
            "use_linear_projection", False
        )

    @classmethod
    def encode(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        states, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
        return states

    @classmethod
    def unet_kwargs(cls) -> dict[str, object]:
        """The real SD-1.x block layout at tiny width."""
        return {
            "block_out_channels": (16, 16, 32, 32),
            "layers_per_block": 2,
            "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            "attention_head_dim": 8,
            "norm_num_groups": 8,
            "use_linear_projection": False,
        }

    @classmethod
    def build_twin(cls, seed: int = 0) -> StableDiffusionPipeline:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            cross_attention_dim=cls.text_hidden,
            **cls.unet_kwargs(),
        )
        text_encoder, tokenizer = tiny_clip_text(seed, cls.text_hidden, cls.text_act)
        return StableDiffusionPipeline(
            vae=tiny_vae(seed),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
