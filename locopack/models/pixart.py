"""PixArt-alpha and PixArt-sigma (diffusion transformers with T5 cross-attention).

T5 states pass ``transformer.caption_projection`` and are read by ``attn2`` of each transformer
block (28 sites).  Text enters nowhere else, so intervening on every site is exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

from .base import BlockOrderTransformer, LowercasedPrompts
from .twin_parts import tiny_t5, tiny_vae

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

_MAX_SEQUENCE = {"PixArtAlphaPipeline": 120, "PixArtSigmaPipeline": 300}


class PixArt(LowercasedPrompts, BlockOrderTransformer):
    """PixArt-alpha/sigma: projected T5 states at ``attn2.to_k``/``to_v`` sites."""

    name: ClassVar[str] = "pixart"
    pretty_name: ClassVar[str] = "PixArt-alpha/sigma"
    pipeline_classes: ClassVar[tuple[str, ...]] = tuple(_MAX_SEQUENCE)
    encoder_name: ClassVar[str] = "T5"

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/PixArt-alpha/PixArt-XL-2-1024-MS"

    @classmethod
    def max_length(cls, pipe: DiffusionPipeline) -> int:
        return _MAX_SEQUENCE.get(type(pipe).__name__, 120)

    @classmethod
    def attention_mask(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        """PixArt masks padded T5 positions in its cross-attention."""
        tokens = pipe.tokenizer(
            [cls.preprocess(p) for p in prompts],
            padding="max_length",
            max_length=cls.max_length(pipe),
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return tokens.attention_mask

    @classmethod
    def encode(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        states, _, _, _ = pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=False,
            device=pipe.device,
            clean_caption=False,
            max_sequence_length=cls.max_length(pipe),
        )
        return pipe.transformer.caption_projection(states.to(pipe.transformer.dtype))

    @classmethod
    def call_kwargs(cls) -> dict[str, object]:
        return {**super().call_kwargs(), "use_resolution_binning": False}

    @classmethod
    def build_twin(cls, seed: int = 0) -> PixArtAlphaPipeline:
        """PixArt's block layout (adaLN-single DiT with cross-attention) at 4 tiny layers."""
        text_encoder, tokenizer = tiny_t5(seed)
        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(
            sample_size=16,
            num_layers=4,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=3,
            caption_channels=text_encoder.config.d_model,
            in_channels=4,
            cross_attention_dim=24,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
        )
        return PixArtAlphaPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=tiny_vae(seed),
            transformer=transformer,
            scheduler=DDIMScheduler(),
        )
