"""Qwen-Image (``QwenImageTransformer2DModel``, e.g. Qwen/Qwen-Image).

The prompt is wrapped in a chat template whose system message asks for a detailed image
description, and encoded by Qwen2.5-VL (its last hidden states).  The pipeline drops the
template's first tokens (``prompt_template_encode_start_idx``: 34 with Qwen's tokenizer, the
system message and ``<|im_start|>user``), so the text sequence starts at the prompt's first
token and ends with the template's closing ``<|im_end|>``, ``<|im_start|>assistant``; it is
trimmed to the batch's longest prompt and padded with zeros under a mask
(``encoder_hidden_states_mask``, None where no prompt is padded).

60 dual-stream blocks carry a text stream of their own, as SD3's do (``txt_norm`` and
``txt_in`` project the states first): each block's ``attn.add_k_proj``/``add_v_proj`` read only
it, and they are the sites (text-only).  No single-stream blocks, no pooled text vector: the
timestep alone modulates the blocks.  Text and image keys get rotary positions; a text row's
position does not depend on the text's length, so padding rows under the mask change nothing.

Lengths: :meth:`QwenImage.encode` pads every prompt to ``t5_length`` rows (the pipeline's
``max_sequence_length``, 512 by default) with the mask (:meth:`QwenImage.attention_mask`),
so that prompts encoded apart line up; LocoGen's swap fits a call and the altered prompt to
one length, padding masked (:mod:`locopack.hooks.joint`).

Guidance: ``guidance_scale`` is an input of guidance-distilled variants only (Qwen-Image
ignores it), and the pipeline's "true CFG" needs a negative prompt, which locopack does not
pass: one transformer call per image and step.  Were a negative prompt given, its call would
come apart, after the conditional one (``guidance_calls_apart``), and the swap leaves it alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)

from ..errors import ModelLayoutError
from .base import TextPart
from .joint_attention import JointAttentionFamily, pad_rows
from .twin_parts import tiny_qwen25_vl

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


#: the chat template's token that closes the prompt
END_OF_TURN = "<|im_end|>"


class TemplatedPart(TextPart):
    """The prompt's part of Qwen-Image's text: its last token is the one before the
    template's closing :data:`END_OF_TURN`, whichever token the tokenizer calls its end."""

    def last_token(self, prompt: str) -> int:
        ids = self.token_ids(prompt)
        end = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        return max(ids.index(end) - 1, 0) if end in ids else len(ids) - 1


class QwenImage(JointAttentionFamily):
    """Qwen-Image: Qwen2.5-VL text streams at the 60 blocks' ``add_k_proj``/``add_v_proj``."""

    name: ClassVar[str] = "qwen-image"
    pretty_name: ClassVar[str] = "Qwen-Image"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("QwenImagePipeline",)
    encoder_name: ClassVar[str] = "Qwen2.5-VL"
    has_pooled_text_path: ClassVar[bool] = False
    pooled_reference: ClassVar[bool] = False
    guidance_calls_apart: ClassVar[bool] = True
    text_mask_argument: ClassVar[str | None] = "encoder_hidden_states_mask"
    onnx_refusal: ClassVar[str | None] = (
        "its transformer takes the image shapes as a Python list (img_shapes) and builds "
        "complex rotary positions from them, inputs the joint-attention tracer does not build"
    )
    card_note: ClassVar[str | None] = (
        "The sites are the blocks' text key/value projections (add_k_proj/add_v_proj), which "
        "read the text stream only. Qwen-Image has no pooled text vector: the timestep alone "
        "modulates the blocks. Its images were drawn without classifier-free guidance: the "
        "guidance setting is an input of guidance-distilled variants only, and the pipeline's "
        "true CFG needs a negative prompt, which locopack does not pass."
    )
    #: the pipeline's default ``max_sequence_length``: the text rows every prompt is padded to
    t5_length: ClassVar[int] = 512
    #: dual-stream blocks of the tiny twin (the real model: 60)
    twin_layers: ClassVar[int] = 3

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/Qwen/Qwen-Image"

    @classmethod
    def guided(cls, guidance: float) -> bool:
        """No: ``guidance_scale`` is ignored by Qwen-Image, and true CFG needs a negative
        prompt, which locopack does not pass (one pass per image and step)."""
        return False

    @classmethod
    def text_parts(cls, pipe: DiffusionPipeline) -> list[TextPart]:
        """One part: the prompt and the template's closing tokens, as the pipeline keeps them
        after dropping the template's first ``prompt_template_encode_start_idx`` tokens.

        Raises:
            ModelLayoutError: the template's opening does not tokenize to the tokens the
                pipeline drops (the prompt's positions would be shifted).
        """
        template = pipe.prompt_template_encode
        opening = template[: template.index("{}")]
        dropped = len(pipe.tokenizer(opening).input_ids)
        if dropped != pipe.prompt_template_encode_start_idx:
            raise ModelLayoutError(
                f"the {cls.pretty_name} chat template's opening is {dropped} tokens with this "
                f"tokenizer, but the pipeline drops {pipe.prompt_template_encode_start_idx}; "
                "use the tokenizer that ships with the model"
            )

        def kept(prompt: str) -> str:
            return template.format(prompt)[len(opening) :]

        return [TemplatedPart(cls.encoder_name, 0, cls.t5_length, pipe.tokenizer, kept)]

    @classmethod
    def _encoded(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = pipe.encode_prompt(
            list(prompts), device=pipe.device, max_sequence_length=cls.t5_length
        )
        if mask is None:  # no prompt was padded
            mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
        return pad_rows(states, cls.t5_length), pad_rows(mask, cls.t5_length)

    @classmethod
    def encode_with_pooled(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, None]:
        """``(states, None)``: the transformer's text input, padded with zeros to
        ``t5_length`` rows; Qwen-Image has no pooled vector."""
        return cls._encoded(pipe, prompts)[0], None

    @classmethod
    def attention_mask(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        """(B, ``t5_length``) keep-mask of :meth:`encode`'s rows: each prompt's own."""
        return cls._encoded(pipe, prompts)[1]

    @classmethod
    def build_twin(cls, seed: int = 0) -> QwenImagePipeline:
        """Qwen-Image's layout (dual-stream blocks with QK RMS norm, 3-axis complex RoPE; a
        causal 3-D VAE) at ``twin_layers`` blocks of width 32, with a tiny Qwen2.5-VL and a
        tokenizer whose chat template opening is the 34 tokens the pipeline drops."""
        text_encoder, tokenizer = tiny_qwen25_vl(seed + 1)
        torch.manual_seed(seed)
        vae = AutoencoderKLQwenImage(
            base_dim=24,
            z_dim=4,
            dim_mult=[1, 2, 4],
            num_res_blocks=1,
            temperal_downsample=[False, True],
            latents_mean=[0.0] * 4,
            latents_std=[1.0] * 4,
        )
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=4 * vae.config.z_dim,  # the pipeline packs 2x2 patches
            out_channels=vae.config.z_dim,
            num_layers=cls.twin_layers,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=text_encoder.config.text_config.hidden_size,
            axes_dims_rope=(4, 6, 6),
        )
        return QwenImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
