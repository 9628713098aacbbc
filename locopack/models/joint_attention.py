"""What the joint-attention transformers (SD3/SD3.5, FLUX.1) share.

In these models text does not enter every block as one fixed set of states.  The text is
projected once (``context_embedder``), and then every block carries a *text stream* of its own
that it updates (``c_{i+1} = c_i + attention + feed-forward``); the text tokens' keys and values
are computed from it, ``add_k_proj``/``add_v_proj(norm1_context(c_i, temb))``, in one softmax
with the image tokens.  FLUX's single-stream blocks concatenate text and image tokens and map
both with the same ``to_k``/``to_v``.  So:

- a **site** is the text-token keys and values of one block: the outputs of ``add_k_proj`` /
  ``add_v_proj`` of a joint (double-stream) block, or the text rows of ``to_k`` / ``to_v`` of a
  FLUX single-stream block (listed with ``text_only=False``: a weight edit there also changes
  how image tokens are mapped);
- what a site reads depends on the latent, the timestep, the pooled vector and every block
  before it, so :meth:`encode` returns the transformer's ``encoder_hidden_states`` input and
  :meth:`site_states` refuses: the inputs must be collected with hooks during denoising;
- the pooled CLIP vector modulates every block (``temb``): a text path that is not a site
  (FLUX.2 has none: ``has_pooled_text_path`` False).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import ModelLayoutError
from .base import ModelFamily, Site, site_projection
from .text_sites import JOINT_ATTENTION, TextSites

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class JointAttentionFamily(ModelFamily):
    """A diffusion transformer whose blocks read text through per-block text streams."""

    denoiser_attr: ClassVar[str] = "transformer"
    projections: ClassVar[tuple[str, str]] = ("add_k_proj", "add_v_proj")
    has_pooled_text_path: ClassVar[bool] = True
    pooled_reference: ClassVar[bool] = True
    text_sites: ClassVar[TextSites] = JOINT_ATTENTION
    #: T5 tokens of the text states (the pipeline's ``max_sequence_length``)
    t5_length: ClassVar[int] = 256
    #: whether the pipeline calls the transformer for the negative prompt apart, after the
    #: conditional call of each step (Chroma), rather than in one ``[uncond; cond]`` batch
    guidance_calls_apart: ClassVar[bool] = False
    #: the transformer argument that masks text padding, (B, text + image tokens) (Chroma);
    #: None where the text is not masked
    text_mask_argument: ClassVar[str | None] = None
    #: (block list attribute, key projection, value projection, text_only), in execution order
    block_lists: ClassVar[tuple[tuple[str, str, str, bool], ...]] = (
        ("transformer_blocks", "add_k_proj", "add_v_proj", True),
    )

    @classmethod
    def matches(cls, pipeline_class: str, denoiser_config: dict[str, object]) -> bool:
        return pipeline_class in cls.pipeline_classes

    @classmethod
    def with_t5_length(cls, length: int) -> type[JointAttentionFamily]:
        """This family with ``length`` T5 tokens in every encoding and pipeline call."""
        if length < 1:
            raise ModelLayoutError(f"the T5 length must be positive, not {length}")
        return type(cls.__name__, (cls,), {"t5_length": length, "__doc__": cls.__doc__})

    @classmethod
    def sites(cls, denoiser: torch.nn.Module) -> list[Site]:
        """One site per block: joint blocks first, then (FLUX) single-stream blocks."""
        found: list[Site] = []
        for blocks, key_name, value_name, text_only in cls.block_lists:
            for i, block in enumerate(getattr(denoiser, blocks, None) or ()):
                path = f"{blocks}.{i}.attn"
                attn = getattr(block, "attn", None)
                key = None if attn is None else site_projection(attn, key_name)
                value = None if attn is None else site_projection(attn, value_name)
                if key is None or value is None:
                    raise ModelLayoutError(
                        f"block {blocks}.{i} of a {cls.pretty_name} transformer has no linear "
                        f"attn.{key_name}/{value_name}; the model does not have the "
                        f"{cls.pretty_name} layout"
                    )
                found.append(
                    Site(
                        len(found),
                        path,
                        f"{path}.{key_name}",
                        f"{path}.{value_name}",
                        key.in_features,
                        key.out_features,
                        text_only,
                    )
                )
        if not found:
            raise ModelLayoutError(
                f"no joint-attention blocks found in the {cls.pretty_name} transformer"
            )
        return found

    @classmethod
    def site_states(
        cls, denoiser: torch.nn.Module, site: Site, states: torch.Tensor
    ) -> torch.Tensor:
        raise ModelLayoutError(
            f"site {site.path} of {cls.pretty_name} reads its block's own text stream, which "
            "depends on the latent, the timestep and every block before it; its inputs must "
            "be collected with hooks during denoising, not computed from the encoded prompt"
        )

    @classmethod
    def max_length(cls, pipe: DiffusionPipeline) -> int:
        """The text tokens of one prompt: ``t5_length`` (SD3 adds its CLIP tokens)."""
        return cls.t5_length

    @classmethod
    def encode(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        """The transformer's ``encoder_hidden_states`` input for ``prompts``, (B, L, D)."""
        return cls.encode_with_pooled(pipe, prompts)[0]

    @classmethod
    def encode_pooled(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor | None:
        """The pooled CLIP vectors the transformer's ``pooled_projections`` receive, (B, P);
        None where the family has no pooled path."""
        return cls.encode_with_pooled(pipe, prompts)[1]

    @classmethod
    @abstractmethod
    def encode_with_pooled(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(states, pooled)`` for ``prompts``, as the pipeline computes them (pooled None
        where the family has no pooled path)."""

    @classmethod
    def given_text(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The transformer's text input and pooled vectors (see :meth:`encode_with_pooled`)."""
        return cls.encode_with_pooled(pipe, prompts)

    @classmethod
    def text_arguments(cls, pipe: DiffusionPipeline, prompts: list[str]) -> dict[str, torch.Tensor]:
        """The transformer's text arguments for ``prompts``, one row each: the states, the
        pooled vectors where the family has them, the (B, L) text mask where it masks text
        (:attr:`text_mask_argument`, without the image columns)."""
        states, pooled = cls.encode_with_pooled(pipe, prompts)
        found = {"encoder_hidden_states": states}
        if pooled is not None:
            found["pooled_projections"] = pooled
        if cls.text_mask_argument is not None:
            found[cls.text_mask_argument] = cls.attention_mask(pipe, prompts)
        return found

    @classmethod
    def call_kwargs(cls) -> dict[str, object]:
        return {"max_sequence_length": cls.t5_length}

    @classmethod
    def denoiser_passes(cls, images: int, guidance: float, swapped: bool) -> int:
        """A call that alters some site also runs the altered text stream alongside
        (:mod:`locopack.hooks.joint`): on the whole batch of every transformer call, or
        only on the conditional call where the negative prompt's call is apart."""
        passes = super().denoiser_passes(images, guidance, swapped)
        if not swapped:
            return passes
        return passes + images if cls.guidance_calls_apart else 2 * passes


def pad_rows(tensor: torch.Tensor, length: int) -> torch.Tensor:
    """``tensor`` (B, L, ...) cut or zero-padded to ``length`` along its second axis (the text
    rows, or a (B, L) text mask, of families whose pipeline trims the text to the batch's
    longest prompt)."""
    if tensor.shape[1] >= length:
        return tensor[:, :length]
    pad = tensor.new_zeros(tensor.shape[0], length - tensor.shape[1], *tensor.shape[2:])
    return torch.cat([tensor, pad], dim=1)
