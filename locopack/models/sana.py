"""SANA (``SanaTransformer2DModel``): linear self-attention, cross-attention to Gemma.

Gemma-2's last hidden states pass ``transformer.caption_projection`` and ``caption_norm`` and
are read by ``attn2`` of each transformer block (20 sites in SANA 1.6B, 28 in 4.8B), padding
masked as in PixArt; ``attn1`` is linear attention over image tokens only.  Text enters
nowhere else, so intervening on every site is exact.

The pipeline by default prefixes every prompt with a long "complex human instruction" and
keeps the first token and the last ``max_sequence_length - 1`` ones.  locopack runs SANA
without it (``complex_human_instruction=None``, in every call it makes): the text sequence
is then the prompt's own tokens from the start token on, so token positions are the prompt's.
An edit made so is solved on Gemma states of the bare prompt; a run with the instruction
reads the concept in another context.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import (
    AutoencoderDC,
    FlowMatchEulerDiscreteScheduler,
    SanaPipeline,
    SanaTransformer2DModel,
)
from transformers import Gemma2Config, Gemma2Model

from .base import BlockOrderTransformer, LowercasedPrompts
from .tokenizers import tiny_gemma_tokenizer

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: Gemma tokens of the text states (the pipeline's default ``max_sequence_length``)
MAX_SEQUENCE = 300


class Sana(LowercasedPrompts, BlockOrderTransformer):
    """SANA: projected Gemma states at ``attn2.to_k``/``to_v`` sites."""

    name: ClassVar[str] = "sana"
    pretty_name: ClassVar[str] = "SANA"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("SanaPipeline",)
    encoder_name: ClassVar[str] = "Gemma"

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/Efficient-Large-Model/Sana_1600M_1024px_diffusers"

    @classmethod
    def max_length(cls, pipe: DiffusionPipeline) -> int:
        return MAX_SEQUENCE

    @classmethod
    def attention_mask(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        """SANA masks padded Gemma positions in its cross-attention."""
        return cls._encoded(pipe, prompts)[1]

    @classmethod
    def encode(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        states = cls._encoded(pipe, prompts)[0].to(pipe.transformer.dtype)
        transformer = pipe.transformer
        return transformer.caption_norm(transformer.caption_projection(states))

    @classmethod
    def _encoded(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask, _, _ = pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            device=pipe.device,
            max_sequence_length=MAX_SEQUENCE,
            complex_human_instruction=None,
        )
        return states, mask

    @classmethod
    def call_kwargs(cls) -> dict[str, object]:
        return {
            **super().call_kwargs(),
            "use_resolution_binning": False,
            "complex_human_instruction": None,
        }

    @classmethod
    def build_twin(cls, seed: int = 0) -> SanaPipeline:
        """SANA's block layout (linear self-attention, cross-attention, GLU conv feed-forward)
        at 4 blocks of width 16, a 2-layer Gemma-2 of width 16 and a deep-compression VAE of
        two levels, after diffusers' own test twin."""
        tokenizer = tiny_gemma_tokenizer()
        config = Gemma2Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=MAX_SEQUENCE,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(seed)
        text_encoder = Gemma2Model(config).eval()
        torch.manual_seed(seed)
        transformer = SanaTransformer2DModel(
            patch_size=1,
            in_channels=4,
            out_channels=4,
            num_layers=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_cross_attention_heads=2,
            cross_attention_head_dim=8,
            cross_attention_dim=16,
            caption_channels=config.hidden_size,
            sample_size=8,
        )
        torch.manual_seed(seed)
        vae = AutoencoderDC(
            in_channels=3,
            latent_channels=4,
            attention_head_dim=2,
            encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            encoder_qkv_multiscales=((), (5,)),
            decoder_qkv_multiscales=((), (5,)),
            encoder_layers_per_block=(1, 1),
            decoder_layers_per_block=(1, 1),
            downsample_block_type="conv",
            upsample_block_type="interpolate",
            decoder_norm_types="rms_norm",
            decoder_act_fns="silu",
            scaling_factor=0.41407,
        )
        return SanaPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        )
