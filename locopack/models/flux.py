"""FLUX.1 dev and schnell (``FluxTransformer2DModel``).

T5 states are projected by ``context_embedder`` and carried through 19 double-stream blocks,
each reading its own text stream through ``attn.add_k_proj``/``add_v_proj``; then 38
single-stream blocks concatenate text and image tokens, ``[text; image]``, and map both with
the same ``attn.to_k``/``to_v``: their text rows are sites too, but not text-only ones (57
sites in all).  CLIP enters only as its pooled vector, through ``time_text_embed`` (with the
distilled guidance scale in FLUX.1-dev): a text path that is not a site.

The pipeline's default size is 128 latent pixels a side whatever the VAE (1024 px for the real
models, 256 px for the tiny twin): pass a resolution for twins (e.g. 16).  FLUX.1-schnell takes
at most 256 T5 tokens (the default here); dev takes 512 (``Flux.with_t5_length(512)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from .joint_attention import JointAttentionFamily
from .twin_parts import tiny_clip_text, tiny_t5, tiny_vae

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from transformers import PreTrainedTokenizerBase

#: shift and scale of the FLUX VAE's latents (from its published config)
FLUX_VAE_LATENTS = {"shift_factor": 0.1159, "scaling_factor": 0.3611}


class Flux(JointAttentionFamily):
    """FLUX.1: T5 text streams at double-block ``add_k_proj``/``add_v_proj`` and at the text
    rows of single-block ``to_k``/``to_v``."""

    name: ClassVar[str] = "flux"
    pretty_name: ClassVar[str] = "FLUX.1"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("FluxPipeline",)
    encoder_name: ClassVar[str] = "T5"
    #: double-stream and single-stream blocks of the tiny twin
    twin_layers: ClassVar[tuple[int, int]] = (3, 3)
    block_lists: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (
        ("transformer_blocks", "add_k_proj", "add_v_proj", True),
        ("single_transformer_blocks", "to_k", "to_v", False),
    )

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/black-forest-labs/FLUX.1-schnell"

    @classmethod
    def guided(cls, guidance: float) -> bool:
        """FLUX.1's ``guidance_scale`` is an input of the distilled model (FLUX.1-dev), not
        classifier-free guidance: one pass per image and step."""
        return False

    @classmethod
    def tokenizer(cls, pipe: DiffusionPipeline) -> PreTrainedTokenizerBase:
        """T5's tokenizer: the text states are T5's alone."""
        return pipe.tokenizer_2

    @classmethod
    def encode_with_pooled(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states, pooled, _ = pipe.encode_prompt(
            prompts, None, device=pipe.device, max_sequence_length=cls.t5_length
        )
        return states, pooled

    @classmethod
    def twin_blocks(cls, text_width: int) -> dict[str, object]:
        """The tiny twin's transformer layout: ``twin_layers`` blocks of width 32 (2 heads),
        RoPE over 3 axes, reading text states ``text_width`` wide."""
        return {
            "patch_size": 1,
            "in_channels": 16,
            "num_layers": cls.twin_layers[0],
            "num_single_layers": cls.twin_layers[1],
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": text_width,
            "axes_dims_rope": (4, 4, 8),
        }

    @classmethod
    def build_twin(cls, seed: int = 0) -> FluxPipeline:
        """FLUX.1's layout (double-stream, then single-stream blocks; RoPE over 3 axes) at 3 + 3
        blocks (``twin_layers``) of width 32, after diffusers' own test twin."""
        text_encoder, tokenizer = tiny_clip_text(seed, 32, "gelu")
        text_encoder_2, tokenizer_2 = tiny_t5(seed + 1, d_model=32)
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            **cls.twin_blocks(text_encoder_2.config.d_model),
            pooled_projection_dim=text_encoder.config.hidden_size,
        )
        return FluxPipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_vae(seed, 4, **FLUX_VAE_LATENTS),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
        )
