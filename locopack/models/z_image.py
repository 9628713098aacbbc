"""Z-Image (``ZImageTransformer2DModel``, e.g. Tongyi-MAI/Z-Image-Turbo).

The prompt is wrapped in a chat template and encoded by a Qwen3 model (its second-to-last
hidden states, padding dropped: one (L_i, 2560) tensor per prompt).  The transformer projects
the text (``cap_embedder``), pads each prompt to a multiple of 32 rows with a learned pad
token, and runs two text-only refiner blocks (``context_refiner``, no timestep modulation):
their ``attention.to_k``/``to_v`` are the sites (:mod:`locopack.models.text_refiner`).  The
image tokens get their own refiner; then 30 blocks (``layers``) run one stream of
``[image; text]`` rows whose projections map both: not sites.  The timestep alone modulates the
blocks: no pooled text path.

The pipeline batches classifier-free guidance as ``[conditional; unconditional]`` (the reverse
of most diffusers pipelines) and guides whenever ``guidance_scale`` > 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

from .base import TextPart
from .flux import FLUX_VAE_LATENTS
from .text_refiner import TextRefinerFamily
from .twin_parts import tiny_chat_text, tiny_vae

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: Z-Image pads each prompt's text rows to a multiple of this (``SEQ_MULTI_OF``)
ROW_MULTIPLE = 32


class ZImage(TextRefinerFamily):
    """Z-Image: Qwen3 text through two refiner blocks, then one joint image-text stream."""

    name: ClassVar[str] = "z-image"
    pretty_name: ClassVar[str] = "Z-Image"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("ZImagePipeline",)
    encoder_name: ClassVar[str] = "Qwen3"
    #: refiner and main-stream blocks of the tiny twin (the real model: 2 and 30)
    twin_layers: ClassVar[tuple[int, int]] = (3, 2)
    #: the pipeline's default ``max_sequence_length``
    text_length: ClassVar[int] = 512

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/Tongyi-MAI/Z-Image-Turbo"

    @classmethod
    def max_length(cls, pipe: DiffusionPipeline) -> int:
        return cls.text_length

    @classmethod
    def text_parts(cls, pipe: DiffusionPipeline) -> list[TextPart]:
        """One part: the chat-templated prompt's tokens (the template's come first)."""

        def templated(prompt: str) -> str:
            return pipe.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=True,
            )

        return [TextPart(cls.encoder_name, 0, cls.text_length, pipe.tokenizer, templated)]

    @classmethod
    def encode_texts(cls, pipe: DiffusionPipeline, prompts: list[str]) -> list[torch.Tensor]:
        # the pipeline rewrites the list it gets in place: hand it a copy
        texts, _ = pipe.encode_prompt(
            list(prompts),
            device=pipe.device,
            do_classifier_free_guidance=False,
            max_sequence_length=cls.text_length,
        )
        return texts

    @classmethod
    def run_text(cls, denoiser: torch.nn.Module, texts: Sequence[torch.Tensor]) -> None:
        patch = denoiser.config.all_patch_size[0]
        like = texts[0]
        latent = torch.zeros(denoiser.config.in_channels, 1, patch, patch, device=like.device)
        denoiser(
            [latent.to(denoiser.dtype)] * len(texts),
            torch.zeros(len(texts), device=like.device),
            list(texts),
            return_dict=False,
        )

    @classmethod
    def text_rows(cls, lengths: Sequence[int]) -> list[int]:
        return [n + (-n) % ROW_MULTIPLE for n in lengths]

    @classmethod
    def call_texts(cls, args: tuple, kwargs: dict[str, object]) -> list[torch.Tensor]:
        return list(args[2] if len(args) > 2 else kwargs["cap_feats"])

    @classmethod
    def build_twin(cls, seed: int = 0) -> ZImagePipeline:
        """Z-Image's layout (patch 2, x/text refiners, joint stream, 3-axis RoPE) at width 32
        with ``twin_layers`` refiner and main blocks."""
        text_encoder, tokenizer = tiny_chat_text(seed + 1, "qwen3")
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(
            all_patch_size=(2,),
            all_f_patch_size=(1,),
            in_channels=16,
            dim=32,
            n_layers=cls.twin_layers[1],
            n_refiner_layers=cls.twin_layers[0],
            n_heads=2,
            n_kv_heads=2,
            cap_feat_dim=text_encoder.config.hidden_size,
            axes_dims=[4, 6, 6],
            axes_lens=[1024, 512, 512],
        )
        # diffusers initializes the pad tokens to zero; random ones make them matter as in
        # the trained model
        with torch.no_grad():
            transformer.cap_pad_token.normal_()
            transformer.x_pad_token.normal_()
        return ZImagePipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_vae(seed, 16, **FLUX_VAE_LATENTS),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )
