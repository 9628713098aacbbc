"""Chroma (``ChromaTransformer2DModel``): FLUX.1's layout conditioned on T5 alone.

19 double-stream blocks read their text streams through ``attn.add_k_proj``/``add_v_proj``,
then 38 single-stream blocks map ``[text; image]`` with the same ``attn.to_k``/``to_v`` (57
sites, the last 38 not text-only), as in FLUX.1 (:mod:`locopack.models.flux`).  What differs:

- no pooled CLIP vector: the modulation comes from the timestep alone (the "approximator"),
  so the T5 states reach the image only through the sites and nothing is held fixed;
- T5 reads with its attention mask, and the transformer masks every text padding position
  but the first (``attention_mask``, over text and image tokens);
- classifier-free guidance calls the transformer apart for the negative prompt, after the
  conditional call of each step: LocoGen's swap and LocoEdit's collection act on the
  conditional call alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

from .base import ModelFamily
from .flux import FLUX_VAE_LATENTS, Flux
from .twin_parts import tiny_t5, tiny_vae

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from transformers import PreTrainedTokenizerBase


class Chroma(Flux):
    """Chroma: masked T5 text streams at FLUX.1's sites, no pooled path."""

    name: ClassVar[str] = "chroma"
    pretty_name: ClassVar[str] = "Chroma"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("ChromaPipeline",)
    has_pooled_text_path: ClassVar[bool] = False
    pooled_reference: ClassVar[bool] = False
    guidance_calls_apart: ClassVar[bool] = True
    text_mask_argument: ClassVar[str | None] = "attention_mask"
    t5_length: ClassVar[int] = 512

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/lodestones/Chroma1-HD"

    @classmethod
    def guided(cls, guidance: float) -> bool:
        """Chroma runs true classifier-free guidance above 1."""
        return ModelFamily.guided.__func__(cls, guidance)

    @classmethod
    def tokenizer(cls, pipe: DiffusionPipeline) -> PreTrainedTokenizerBase:
        return pipe.tokenizer

    @classmethod
    def _encoded(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states, _, mask, _, _, _ = pipe.encode_prompt(
            prompts,
            device=pipe.device,
            do_classifier_free_guidance=False,
            max_sequence_length=cls.t5_length,
        )
        return states, mask

    @classmethod
    def encode_with_pooled(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, None]:
        return cls._encoded(pipe, prompts)[0], None

    @classmethod
    def attention_mask(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        """The text columns of the transformer's ``attention_mask``: each prompt's tokens
        and its first padding position."""
        return cls._encoded(pipe, prompts)[1]

    @classmethod
    def build_twin(cls, seed: int = 0) -> ChromaPipeline:
        """Chroma's layout (FLUX.1's blocks, pruned modulation from an approximator) at
        3 + 3 blocks (``twin_layers``) of width 32, after diffusers' own test twin."""
        text_encoder, tokenizer = tiny_t5(seed + 1, d_model=32)
        torch.manual_seed(seed)
        transformer = ChromaTransformer2DModel(
            **cls.twin_blocks(text_encoder.config.d_model),
            approximator_hidden_dim=32,
            approximator_layers=2,
        )
        return ChromaPipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=tiny_vae(seed, 4, **FLUX_VAE_LATENTS),
            text_encoder=text_encoder,
            tokenizer=tokenizer,
        )
