"""Stable Diffusion 3 and 3.5 (MMDiT, ``SD3Transformer2DModel``).

Two CLIP encoders and T5: the CLIP penultimate states (concatenated, zero-padded to T5's
width) and the T5 states are stacked along the sequence, ``[77 CLIP tokens; T5 tokens]``, and
projected by ``context_embedder``; every ``JointTransformerBlock`` then reads its own text
stream through ``attn.add_k_proj``/``add_v_proj`` (24 sites in SD3.5 Medium, 38 in Large).  The
last block is ``context_pre_only`` (it outputs no text) but its text keys/values still count.
SD3.5's ``attn2`` (``dual_attention_layers``) attends over image tokens only: not a site.  The
two CLIP pooled vectors, concatenated, enter ``temb`` and modulate every block.  So the text
sequence has two parts (:meth:`StableDiffusion3.text_parts`): a concept has tokens in both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)

from .base import TextPart
from .joint_attention import JointAttentionFamily
from .twin_parts import tiny_clip_text, tiny_t5, tiny_vae

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: shift and scale of the SD3 VAE's latents (from its published config)
SD3_VAE_LATENTS = {"shift_factor": 0.0609, "scaling_factor": 1.5305}


class StableDiffusion3(JointAttentionFamily):
    """SD3 / SD3.5: CLIP + T5 text streams read at ``add_k_proj``/``add_v_proj`` per block."""

    name: ClassVar[str] = "sd3"
    pretty_name: ClassVar[str] = "Stable Diffusion 3/3.5"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("StableDiffusion3Pipeline",)
    #: attention heads of the tiny twin (of width 8 each: the text stream is 8 x heads wide)
    twin_heads: ClassVar[int] = 2
    #: joint blocks of the tiny twin
    twin_layers: ClassVar[int] = 5

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium"

    @classmethod
    def encode_with_pooled(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states, _, pooled, _ = pipe.encode_prompt(
            prompts,
            None,
            None,
            device=pipe.device,
            do_classifier_free_guidance=False,
            max_sequence_length=cls.t5_length,
        )
        return states, pooled

    @classmethod
    def max_length(cls, pipe: DiffusionPipeline) -> int:
        """CLIP's tokens, then T5's."""
        return pipe.tokenizer.model_max_length + cls.t5_length

    @classmethod
    def text_parts(cls, pipe: DiffusionPipeline) -> list[TextPart]:
        """CLIP's positions (both CLIP encoders' states, concatenated per position), then T5's;
        a pipeline without T5 (``tokenizer_3`` None) feeds zeros there: no part."""
        clip = pipe.tokenizer.model_max_length
        parts = [TextPart("CLIP", 0, clip, pipe.tokenizer)]
        if pipe.tokenizer_3 is not None:
            parts.append(TextPart("T5", clip, cls.t5_length, pipe.tokenizer_3))
        return parts

    @classmethod
    def build_twin(cls, seed: int = 0) -> StableDiffusion3Pipeline:
        """The SD3.5 block layout (QK RMS norm, dual attention in the first blocks, a last
        ``context_pre_only`` block) at 5 blocks (``twin_layers``) of width 16 (``twin_heads``),
        after diffusers' own test twin."""
        text_encoder, tokenizer = tiny_clip_text(seed, 16, "gelu", projection=16)
        text_encoder_2, tokenizer_2 = tiny_clip_text(seed + 1, 16, "gelu", projection=16)
        text_encoder_3, tokenizer_3 = tiny_t5(seed + 2, d_model=32)
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=cls.twin_layers,
            attention_head_dim=8,
            num_attention_heads=cls.twin_heads,
            caption_projection_dim=8 * cls.twin_heads,
            joint_attention_dim=text_encoder_3.config.d_model,
            pooled_projection_dim=32,
            pos_embed_max_size=8,
            dual_attention_layers=(0, 1),
            qk_norm="rms_norm",
        )
        return StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_vae(seed, 4, **SD3_VAE_LATENTS),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
        )
