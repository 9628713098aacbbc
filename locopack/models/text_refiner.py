"""What the single-stream transformers with a text refiner (Z-Image, Lumina-2) share.

These models have no projection that reads only text inside their main stream: image and text
tokens are concatenated and every block maps both with the same ``to_q``/``to_k``/``to_v``.
Before that stream the text goes through a *text-only prefix*: an input projection (Z-Image's
``cap_embedder``) and a few refiner blocks (``context_refiner``) of self-attention over the text
tokens alone, with no timestep modulation.  So:

- a **site** is one refiner block's key and value projections (``text_only`` True): they read
  only text, and what they read is a function of the prompt alone (no latent, no timestep), so
  their inputs are computed by running the prefix on the prompt (:func:`prefix_io`), not
  collected while denoising;
- each block reads the refiner stream as the blocks before it left it, so an altered prompt's
  keys and values at a site come from the altered prompt's own refiner stream
  (:mod:`locopack.hooks.refiner`), and an edit upstream moves the inputs of every later
  site (:mod:`locopack.edit.refiner` solves them in execution order);
- the input projection is no site: swapping its output swaps the whole text, which is the
  sweep's all-sites line, so a window there would win every erase sweep and say nothing about
  where the attribute lives;
- the main stream's projections map image rows with the same weights: not sites (refused).

There is no pooled text path: the blocks are modulated by the timestep alone.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import ModelLayoutError
from .base import ModelFamily, Site, site_projection
from .text_sites import TEXT_REFINER, TextSites

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class _Stop(Exception):
    """Ends a transformer call once the refiner has run."""


class TextRefinerFamily(ModelFamily):
    """A single-stream transformer whose text-only sites are its refiner blocks."""

    denoiser_attr: ClassVar[str] = "transformer"
    text_sites: ClassVar[TextSites] = TEXT_REFINER
    card_note: ClassVar[str | None] = (
        "The sites are text-only: the blocks that refine the text before it joins the image "
        "tokens in one stream. That stream's projections map image and text rows with the same "
        "weights; they are not sites, and the edit leaves them unchanged."
    )
    #: the module list of text refiner blocks, and the attention module inside each block
    refiner_attr: ClassVar[str] = "context_refiner"
    attention_attr: ClassVar[str] = "attention"
    #: the text input projection (not a site; named in messages and the card)
    input_projection: ClassVar[str] = "cap_embedder.1"
    #: whether the refiner masks the rows past a prompt's own (a swap may then substitute a
    #: prompt of another length, its mask with it); else the prompts must fill equal rows
    masks_text: ClassVar[bool] = False
    #: the main stream's block list, whose projections map image rows too (not sites)
    shared_blocks: ClassVar[str] = "layers"
    onnx_refusal: ClassVar[str | None] = (
        "its transformer takes a Python list of per-prompt tensors of different lengths, "
        "which the ONNX tracer cannot take as inputs"
    )

    @classmethod
    def matches(cls, pipeline_class: str, denoiser_config: dict[str, object]) -> bool:
        return pipeline_class in cls.pipeline_classes

    @classmethod
    def sites(cls, denoiser: torch.nn.Module) -> list[Site]:
        """One text-only site per refiner block, in execution order."""
        found: list[Site] = []
        for i, block in enumerate(getattr(denoiser, cls.refiner_attr, None) or ()):
            path = f"{cls.refiner_attr}.{i}.{cls.attention_attr}"
            attn = getattr(block, cls.attention_attr, None)
            key = None if attn is None else site_projection(attn, "to_k")
            value = None if attn is None else site_projection(attn, "to_v")
            if key is None or value is None:
                raise ModelLayoutError(
                    f"block {cls.refiner_attr}.{i} of a {cls.pretty_name} transformer has no "
                    f"linear {cls.attention_attr}.to_k/to_v; the model does not have the "
                    f"{cls.pretty_name} layout"
                )
            found.append(
                Site(i, path, f"{path}.to_k", f"{path}.to_v", key.in_features, key.out_features)
            )
        if not found:
            raise ModelLayoutError(
                f"no text refiner blocks ({cls.refiner_attr}) found in the {cls.pretty_name} "
                "transformer"
            )
        return found

    @classmethod
    def site_states(
        cls, denoiser: torch.nn.Module, site: Site, states: torch.Tensor
    ) -> torch.Tensor:
        raise ModelLayoutError(
            f"site {site.path} of {cls.pretty_name} reads the refiner stream as the blocks "
            "before it leave it; its inputs come from running the text prefix (prefix_io)"
        )

    @classmethod
    def given_text(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise ModelLayoutError(
            f"{cls.pretty_name} passes each prompt's own rows through a text refiner first"
        )

    @classmethod
    def layers_note(cls) -> str | None:
        return (
            f"the sites are text refiner blocks; the {cls.shared_blocks}.* projections "
            f"(shared with image rows) and {cls.input_projection} are not sites"
        )

    # ---- text as the transformer receives it -------------------------------------------------
    @classmethod
    @abstractmethod
    def encode_texts(cls, pipe: DiffusionPipeline, prompts: list[str]) -> list[torch.Tensor]:
        """The transformer's text input for each prompt, (L_i, D), as the pipeline makes it."""

    @classmethod
    @abstractmethod
    def run_text(cls, denoiser: torch.nn.Module, texts: Sequence[torch.Tensor]) -> None:
        """Call ``denoiser`` on ``texts`` with a minimal latent (the refiner reads no latent)."""

    @classmethod
    @abstractmethod
    def text_rows(cls, lengths: Sequence[int]) -> list[int]:
        """The rows each text of ``lengths`` tokens fills in the refiner's sequences."""

    @classmethod
    @abstractmethod
    def call_texts(cls, args: tuple, kwargs: dict[str, object]) -> list[torch.Tensor]:
        """Each sample's text rows, (L_i, D) without padding, in a transformer call with
        ``args``/``kwargs`` as the pipeline makes it."""

    @classmethod
    def encode(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        """The texts of :meth:`encode_texts` zero-padded to one length, (B, L, D); the real
        tokens are those :meth:`attention_mask` keeps."""
        return torch.nn.utils.rnn.pad_sequence(cls.encode_texts(pipe, prompts), batch_first=True)

    @classmethod
    def attention_mask(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        """(B, L) keep-mask of :meth:`encode`'s rows: the pipeline drops padding."""
        texts = cls.encode_texts(pipe, prompts)
        mask = torch.zeros(len(texts), max(len(t) for t in texts), dtype=torch.bool)
        for i, text in enumerate(texts):
            mask[i, : len(text)] = True
        return mask


@torch.no_grad()
def prefix_io(
    family: type[TextRefinerFamily],
    denoiser: torch.nn.Module,
    texts: Sequence[torch.Tensor],
    modules: Sequence[str],
    *,
    outputs: bool = False,
) -> dict[str, list[torch.Tensor]]:
    """{module path: one (rows, features) tensor per text}: the inputs (or ``outputs``) of
    refiner ``modules`` over each text's rows, from one transformer call stopped after the
    refiner's last block."""
    rows = family.text_rows([len(text) for text in texts])
    found: dict[str, list[torch.Tensor]] = {}

    def keep(path: str):
        def hook(_module, args, output):
            value = output if outputs else args[0]
            found[path] = [value[i, :n].detach() for i, n in enumerate(rows)]

        return hook

    def stop(_module, _args, _output):
        raise _Stop

    last = getattr(denoiser, family.refiner_attr)[-1]
    handles = [denoiser.get_submodule(path).register_forward_hook(keep(path)) for path in modules]
    handles.append(last.register_forward_hook(stop))
    try:
        family.run_text(denoiser, texts)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return found
