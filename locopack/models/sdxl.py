"""Stable Diffusion XL.

Two CLIP text encoders; their penultimate states are concatenated (768 + 1280 = 2048-d) and read
by ``attn2`` of every transformer block (70 sites in the base model).  The second encoder's
pooled, projected embedding also enters the UNet through ``add_embedding`` together with the
size/crop ``time_ids``: that path is not a site, so intervening on every site does not fully
turn one prompt into another.  The two encoders share token positions (their states are
concatenated per position), so the text sequence is one CLIP part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

from .base import ModelFamily
from .twin_parts import tiny_clip_text, tiny_vae

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class StableDiffusionXL(ModelFamily):
    """SD-XL: concatenated two-encoder states at ``attn2.to_k``/``to_v``, plus pooled text."""

    name: ClassVar[str] = "sdxl"
    pretty_name: ClassVar[str] = "Stable Diffusion XL"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusionXLPipeline",)
    has_pooled_text_path: ClassVar[bool] = True
    kohya_metadata: ClassVar[dict[str, str] | None] = {"ss_base_model_version": "sdxl_base_v1-0"}

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0"

    @classmethod
    def matches(cls, pipeline_class: str, denoiser_config: dict[str, object]) -> bool:
        return pipeline_class in cls.pipeline_classes

    @classmethod
    def encode(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        states, _, _, _ = pipe.encode_prompt(
            prompt=prompts,
            device=pipe.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return states

    @classmethod
    def build_twin(cls, seed: int = 0) -> StableDiffusionXLPipeline:
        """The real SD-XL block layout (no attention at the first level, deeper transformers
        further down) at tiny width and depth (1, 1, 2) instead of (1, 2, 10): 17 sites."""
        text_encoder, tokenizer = tiny_clip_text(seed, 32)
        text_encoder_2, tokenizer_2 = tiny_clip_text(seed + 1, 32, "gelu", projection=32)
        time_dim = 8
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32, 32),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),
            attention_head_dim=(2, 4, 8),
            norm_num_groups=8,
            use_linear_projection=True,
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=32 + 6 * time_dim,
        )
        return StableDiffusionXLPipeline(
            vae=tiny_vae(seed),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=EulerDiscreteScheduler(
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                timestep_spacing="leading",
                steps_offset=1,
            ),
        )
