"""FLUX.2 (``Flux2Transformer2DModel``, e.g. black-forest-labs/FLUX.2-dev).

The prompt is wrapped in a chat template with a system message and encoded by a Mistral-3
model; the pipeline stacks its hidden states 10, 20 and 30 along the width (three times the
encoder's width: 15360 for the real model).  ``context_embedder`` projects them, and 8
double-stream blocks carry a text stream of their own as FLUX.1's do: each block's
``attn.add_k_proj``/``add_v_proj`` read only it, and they are the sites (text-only).  Then 48
single-stream blocks run ``[text; image]`` rows through one fused projection,
``attn.to_qkv_mlp_proj``, whose output columns are the queries, keys, values and the MLP's
input at once.  Editing their text rows would need column slices of that fused matrix in the
swap, the edit and every export format, so they are no sites here: a recipe that names one is
refused with that reason (``edit.allow_image_sites`` does not open them).

No pooled text vector exists: the timestep and the distilled guidance scale alone modulate
the blocks, so nothing is held fixed besides the sites.  The pipeline runs no classifier-free
guidance (``guidance_scale`` is an embedded input), one transformer call per step.  Its
default size is 128 latent pixels a side (pass a resolution for twins, e.g. 16).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from diffusers.pipelines.flux2.pipeline_flux2 import format_input

from .base import TextPart
from .joint_attention import JointAttentionFamily
from .twin_parts import tiny_mistral3

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: the block list whose fused projections are not sites
FUSED_BLOCKS = "single_transformer_blocks"


class Flux2(JointAttentionFamily):
    """FLUX.2: Mistral-3 text streams at the double-stream blocks' ``add_k_proj``/``add_v_proj``."""

    name: ClassVar[str] = "flux2"
    pretty_name: ClassVar[str] = "FLUX.2"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("Flux2Pipeline",)
    encoder_name: ClassVar[str] = "Mistral-3"
    has_pooled_text_path: ClassVar[bool] = False
    pooled_reference: ClassVar[bool] = False
    onnx_refusal: ClassVar[str | None] = (
        "its transformer takes 4-axis position ids and no pooled vector, inputs the "
        "joint-attention tracer does not build"
    )
    card_note: ClassVar[str | None] = (
        "The sites are the double-stream blocks' text key/value projections, which read the "
        "text stream only. The single-stream blocks map text and image rows through one fused "
        "projection (queries, keys, values and the MLP input together): they are not sites, "
        "and the edit leaves them unchanged. FLUX.2 has no pooled text vector."
    )
    #: double-stream and single-stream blocks of the tiny twin (the real model: 8 and 48)
    twin_layers: ClassVar[tuple[int, int]] = (3, 2)
    #: the pipeline's default ``max_sequence_length``
    t5_length: ClassVar[int] = 512

    @classmethod
    def guided(cls, guidance: float) -> bool:
        """FLUX.2 embeds ``guidance_scale`` in the transformer's input, as FLUX.1-dev does: one
        pass per image and step, no unconditional batch."""
        return False

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/black-forest-labs/FLUX.2-dev"

    @classmethod
    def not_a_site_reason(cls, path: str) -> str:
        if not path.startswith(f"{FUSED_BLOCKS}."):
            return ""
        return (
            "FLUX.2's single-stream blocks fuse queries, keys, values and the MLP input in one "
            "to_qkv_mlp_proj whose key/value columns locopack does not edit; choose "
            "transformer_blocks.* (the 8 double-stream blocks)"
        )

    @classmethod
    def text_parts(cls, pipe: DiffusionPipeline) -> list[TextPart]:
        """One part: the chat-templated prompt's tokens (the system message's come first)."""

        def templated(prompt: str) -> str:
            (messages,) = format_input([prompt], system_message=pipe.system_message)
            return pipe.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=False
            )

        return [TextPart(cls.encoder_name, 0, cls.t5_length, pipe.tokenizer, templated)]

    @classmethod
    def encode_with_pooled(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, None]:
        """``(states, None)``: FLUX.2 has no pooled vector."""
        states, _ = pipe.encode_prompt(
            list(prompts), device=pipe.device, max_sequence_length=cls.t5_length
        )
        return states, None

    @classmethod
    def build_twin(cls, seed: int = 0) -> Flux2Pipeline:
        """FLUX.2's layout (double-, then fused single-stream blocks; 4-axis RoPE; a VAE with
        batch-normed 2x2-patched latents) at 3 + 2 blocks (``twin_layers``) of width 32."""
        text_encoder, tokenizer = tiny_mistral3(seed + 1)
        torch.manual_seed(seed)
        vae = AutoencoderKLFlux2(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=4,
            layers_per_block=1,
            sample_size=32,
        )
        torch.manual_seed(seed)
        transformer = Flux2Transformer2DModel(
            patch_size=1,
            in_channels=4 * vae.config.latent_channels,  # the pipeline packs 2x2 patches
            num_layers=cls.twin_layers[0],
            num_single_layers=cls.twin_layers[1],
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=3 * text_encoder.config.text_config.hidden_size,
            timestep_guidance_channels=32,
            axes_dims_rope=(4, 4, 4, 4),
        )
        return Flux2Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
