"""Lumina-Image 2.0 (``Lumina2Transformer2DModel``, Alpha-VLLM/Lumina-Image-2.0).

The pipeline prefixes every prompt with a system prompt (``"<system prompt> <Prompt Start>
<prompt>"``) and encodes it with Gemma-2 (second-to-last hidden states, padded to 256 tokens
with a mask).  The transformer projects the text (``time_caption_embed.caption_embedder``) and
runs two text-only refiner blocks (``context_refiner``, masked, no timestep modulation): their
``attn.to_k``/``to_v`` are the sites (:mod:`locopack.models.text_refiner`).  Then 26 blocks
(``layers``) run one stream of ``[text; image]`` rows whose projections map both: not sites.
No pooled text path.

Classifier-free guidance calls the transformer twice per step, conditional first; the swap
tells the calls apart by their text.  The pipeline assumes a VAE scale factor of 8 and a 2x2
patch: image sizes are multiples of 16 (the twin's VAE has four levels to match).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

from .base import TextPart
from .flux import FLUX_VAE_LATENTS
from .text_refiner import TextRefinerFamily
from .twin_parts import tiny_chat_text, tiny_vae

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class Lumina2(TextRefinerFamily):
    """Lumina-Image 2.0: Gemma-2 text through two masked refiner blocks, then one stream."""

    name: ClassVar[str] = "lumina2"
    pretty_name: ClassVar[str] = "Lumina-Image 2.0"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("Lumina2Pipeline",)
    encoder_name: ClassVar[str] = "Gemma-2"
    attention_attr: ClassVar[str] = "attn"
    input_projection: ClassVar[str] = "time_caption_embed.caption_embedder.1"
    masks_text: ClassVar[bool] = True
    onnx_refusal: ClassVar[str | None] = (
        "its rotary embedding reads each prompt's length from the text mask in Python, a "
        "data-dependent shape the ONNX tracer cannot export"
    )
    #: refiner and main-stream blocks of the tiny twin (the real model: 2 and 26)
    twin_layers: ClassVar[tuple[int, int]] = (3, 2)
    #: the pipeline's default ``max_sequence_length``
    text_length: ClassVar[int] = 256

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/Alpha-VLLM/Lumina-Image-2.0"

    @classmethod
    def max_length(cls, pipe: DiffusionPipeline) -> int:
        return cls.text_length

    @classmethod
    def text_parts(cls, pipe: DiffusionPipeline) -> list[TextPart]:
        """One part: the system prompt's tokens, then the prompt's."""

        def prefixed(prompt: str) -> str:
            return f"{pipe.system_prompt} <Prompt Start> {prompt}"

        return [TextPart(cls.encoder_name, 0, cls.text_length, pipe.tokenizer, prefixed)]

    @classmethod
    def encode_texts(cls, pipe: DiffusionPipeline, prompts: list[str]) -> list[torch.Tensor]:
        states, mask, _, _ = pipe.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            device=pipe.device,
            max_sequence_length=cls.text_length,
        )
        return [row[keep.bool()] for row, keep in zip(states, mask, strict=True)]

    @classmethod
    def run_text(cls, denoiser: torch.nn.Module, texts: Sequence[torch.Tensor]) -> None:
        states = torch.nn.utils.rnn.pad_sequence(list(texts), batch_first=True)
        mask = torch.zeros(states.shape[:2], dtype=torch.bool, device=states.device)
        for i, text in enumerate(texts):
            mask[i, : len(text)] = True
        patch = denoiser.config.patch_size
        latent = torch.zeros(len(texts), denoiser.config.in_channels, patch, patch)
        denoiser(
            hidden_states=latent.to(states.device, denoiser.dtype),
            timestep=torch.zeros(len(texts), device=states.device),
            encoder_hidden_states=states,
            encoder_attention_mask=mask,
            return_dict=False,
        )

    @classmethod
    def text_rows(cls, lengths: Sequence[int]) -> list[int]:
        return list(lengths)

    @classmethod
    def call_texts(cls, args: tuple, kwargs: dict[str, object]) -> list[torch.Tensor]:
        states, mask = kwargs["encoder_hidden_states"], kwargs["encoder_attention_mask"]
        return [row[keep.bool()] for row, keep in zip(states, mask, strict=True)]

    @classmethod
    def build_twin(cls, seed: int = 0) -> Lumina2Pipeline:
        """Lumina-2's layout (patch 2, grouped key/value heads, masked text refiner, joint
        stream, 3-axis RoPE) at width 32 with ``twin_layers`` refiner and main blocks."""
        text_encoder, tokenizer = tiny_chat_text(seed + 1, "gemma2")
        torch.manual_seed(seed)
        transformer = Lumina2Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=16,
            hidden_size=32,
            num_layers=cls.twin_layers[1],
            num_refiner_layers=cls.twin_layers[0],
            num_attention_heads=2,
            num_kv_heads=1,
            multiple_of=16,
            axes_dim_rope=(4, 6, 6),
            axes_lens=(300, 64, 64),
            cap_feat_dim=text_encoder.config.hidden_size,
        )
        return Lumina2Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            # four levels: the pipeline assumes the real VAE's scale factor of 8
            vae=tiny_vae(seed, 16, (8, 8, 16, 16), **FLUX_VAE_LATENTS),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )
