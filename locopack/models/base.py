"""The interface every model family implements, and what the families share.

A *site* is one attention module that reads the text states: its key and value projections are
what LocoGen intervenes on and LocoEdit changes.  Sites are addressed by module path inside the
denoiser (``unet`` or ``transformer``) and listed in network execution order.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from ..errors import ModelLayoutError
from .text_sites import CROSS_ATTENTION, TextSites

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Site:
    """One text-conditioning site: an attention module whose key/value read the text states."""

    index: int
    path: str
    key: str
    value: str
    in_features: int
    out_features: int
    #: False where the projections also map image tokens (FLUX single-stream blocks): there
    #: only the text rows of their outputs are the site, and a weight edit is not text-only
    text_only: bool = True

    @property
    def kind(self) -> str:
        """What the site's projections read, in words: ``text-only`` or ``shared with image
        rows``."""
        return "text-only" if self.text_only else "shared with image rows"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view (with :attr:`kind`)."""
        return asdict(self) | {"kind": self.kind}


def site_projection(attn: torch.nn.Module, name: str) -> torch.nn.Linear | None:
    """The linear projection ``name`` of an attention module, or None.

    A projection wrapped by PEFT (a loaded LoRA) is unwrapped to its original ``base_layer``.
    """
    module = getattr(attn, name, None)
    module = getattr(module, "base_layer", module)
    return module if isinstance(module, torch.nn.Linear) else None


def natural_key(path: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


_BLOCK_RANK = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def unet_execution_order(path: str) -> tuple:
    """Sort key putting UNet module paths in execution order: down, mid, up, then by index.

    ``named_modules`` lists ``up_blocks`` before ``mid_block`` (registration order), so the
    registration order cannot be used.
    """
    head = path.split(".", 1)[0]
    return (_BLOCK_RANK.get(head, 3), natural_key(path))


def token_positions(
    tokenizer: PreTrainedTokenizerBase, text: str, concept: str, max_length: int
) -> list[int]:
    """Positions of ``concept``'s tokens (case-insensitive, first match) when ``tokenizer``
    tokenizes ``text`` to at most ``max_length`` tokens; empty when the concept does not occur
    in the text or lies beyond the limit."""
    match = re.search(re.escape(concept.strip()), text, flags=re.IGNORECASE)
    if match is None:
        return []
    enc = tokenizer(text, truncation=True, max_length=max_length, return_offsets_mapping=True)
    return [
        i
        for i, (start, end) in enumerate(enc.offset_mapping)
        if end > start and start < match.end() and end > match.start()
    ]


def _unchanged(prompt: str) -> str:
    return prompt


@dataclass(frozen=True)
class TextPart:
    """One encoder's part of the text sequence the sites read: positions ``start`` to
    ``start + length - 1`` hold the states of ``tokenizer``'s tokens of a prompt (after
    ``preprocess``, the pipeline's own change to the prompt).  Positions within a part count
    from its first token (0: the start token where the tokenizer adds one)."""

    name: str
    start: int
    length: int
    tokenizer: PreTrainedTokenizerBase
    preprocess: Callable[[str], str] = _unchanged

    def token_ids(self, prompt: str) -> list[int]:
        """Token ids of ``prompt`` in this part, without padding."""
        text = self.preprocess(prompt)
        return self.tokenizer(text, truncation=True, max_length=self.length).input_ids

    def last_token(self, prompt: str) -> int:
        """Position of the last token before end-of-text."""
        ids = self.token_ids(prompt)
        eos = self.tokenizer.eos_token_id
        return max(ids.index(eos) - 1, 0) if eos in ids else len(ids) - 1

    def find(self, prompt: str, concept: str) -> list[int]:
        """Positions of ``concept``'s tokens in ``prompt`` (case-insensitive, first match);
        empty when it does not occur or lies beyond this part's length."""
        return token_positions(self.tokenizer, self.preprocess(prompt), concept, self.length)

    def concept_positions(self, prompt: str, concept: str) -> list[int]:
        """:meth:`find`, refusing a concept it does not find.

        Raises:
            ModelLayoutError: the concept does not occur in the prompt, or is truncated away.
        """
        found = self.find(prompt, concept)
        if found:
            return found
        if re.search(re.escape(concept.strip()), prompt, flags=re.IGNORECASE) is None:
            raise ModelLayoutError(f"concept {concept!r} does not occur in prompt {prompt!r}")
        raise ModelLayoutError(
            f"concept {concept!r} in prompt {prompt!r} lies beyond the {self.length}-token "
            f"limit of {self.name}"
        )


class ModelFamily(ABC):
    """A family of text-to-image pipelines that share where and how text enters the denoiser."""

    #: registry key, e.g. ``"sd1"``
    name: ClassVar[str]
    #: human name for tables and model cards
    pretty_name: ClassVar[str]
    #: diffusers pipeline class names this family loads as
    pipeline_classes: ClassVar[tuple[str, ...]]
    #: attribute of the pipeline that holds the denoiser
    denoiser_attr: ClassVar[str] = "unet"
    #: names of the key and value projections inside a site
    projections: ClassVar[tuple[str, str]] = ("to_k", "to_v")
    #: the text encoder whose tokens the text sequence holds (one part; see :meth:`text_parts`)
    encoder_name: ClassVar[str] = "CLIP"
    #: whether text also reaches the denoiser outside the sites (pooled embeddings)
    has_pooled_text_path: ClassVar[bool] = False
    #: whether LocoGen swaps the pooled text path alone as a reference line (SD3, FLUX.1)
    pooled_reference: ClassVar[bool] = False
    #: the kind of its text sites (:mod:`locopack.models.text_sites`): cross-attention, joint
    #: attention (a text stream per block, updated block by block: SD3, FLUX) or a text refiner
    #: (Z-Image); callers ask it, not the family's class, what differs by kind
    text_sites: ClassVar[TextSites] = CROSS_ATTENTION
    #: what the model card says of the family's text paths that are no sites (None: nothing)
    card_note: ClassVar[str | None] = None
    #: why no ONNX export of this family's denoiser exists (None: the tracer handles it)
    onnx_refusal: ClassVar[str | None] = None
    #: header entries of a kohya LoRA file for this family (``ss_base_model_version`` as kohya
    #: sd-scripts writes it, which AUTOMATIC1111 reads); None: no kohya file exists for it
    kohya_metadata: ClassVar[dict[str, str] | None] = None

    @classmethod
    def reference_url(cls) -> str:
        """Where the family's original weights are documented."""
        return ""

    @classmethod
    @abstractmethod
    def matches(cls, pipeline_class: str, denoiser_config: dict[str, object]) -> bool:
        """Whether a pipeline of this class with this denoiser config belongs to the family."""

    # ---- sites -------------------------------------------------------------------------------
    @classmethod
    def is_site(cls, module: torch.nn.Module) -> bool:
        """Whether ``module`` is an attention module whose key/value read the text states."""
        return bool(getattr(module, "is_cross_attention", False))

    @classmethod
    def order_key(cls, path: str) -> tuple:
        """Sort key giving network execution order."""
        return unet_execution_order(path)

    @classmethod
    def not_a_site_reason(cls, path: str) -> str:
        """Why a recipe may not name ``path`` although it reads text (FLUX.2's fused
        single-stream blocks); empty for every other path."""
        return ""

    @classmethod
    def sites(cls, denoiser: torch.nn.Module) -> list[Site]:
        """The text-conditioning sites of ``denoiser`` in execution order."""
        key_name, value_name = cls.projections
        found = []
        for path, module in denoiser.named_modules():
            if not cls.is_site(module):
                continue
            key, value = site_projection(module, key_name), site_projection(module, value_name)
            if key is None or value is None:
                raise ModelLayoutError(
                    f"site {path!r} of a {cls.pretty_name} denoiser has no linear "
                    f"{key_name}/{value_name}; the model does not have the {cls.pretty_name} layout"
                )
            found.append((path, key))
        if not found:
            raise ModelLayoutError(
                f"no text-conditioning sites found in the {cls.pretty_name} denoiser; "
                "is this a text-to-image model?"
            )
        found.sort(key=lambda item: cls.order_key(item[0]))
        return [
            Site(
                i, path, f"{path}.{key_name}", f"{path}.{value_name}", k.in_features, k.out_features
            )
            for i, (path, k) in enumerate(found)
        ]

    # ---- text --------------------------------------------------------------------------------
    @classmethod
    def tokenizer(cls, pipe: DiffusionPipeline) -> PreTrainedTokenizerBase:
        """The tokenizer whose token positions index the site states."""
        return pipe.tokenizer

    @classmethod
    @abstractmethod
    def encode(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        """Encode prompts into the states the sites' attention modules receive, (B, L, D).

        For most families these are what the key/value projections read; see
        :meth:`site_states` for families that normalize them per site first.
        """

    @classmethod
    def site_states(
        cls, denoiser: torch.nn.Module, site: Site, states: torch.Tensor
    ) -> torch.Tensor:
        """What ``site``'s key/value projections read when its attention module gets ``states``.

        Identity except where the attention normalizes the text first (``norm_cross``, e.g.
        DeepFloyd IF's group norm), which differs per site.
        """
        attn = denoiser.get_submodule(site.path)
        if getattr(attn, "norm_cross", None) is not None:
            return attn.norm_encoder_hidden_states(states)
        return states

    @classmethod
    def preprocess(cls, prompt: str) -> str:
        """The text the pipeline actually tokenizes for ``prompt``."""
        return prompt

    @classmethod
    def given_text(
        cls, pipe: DiffusionPipeline, prompts: list[str]
    ) -> tuple[Tensor, Tensor | None]:
        """``(states, pooled)`` that stand in for ``prompts`` when given to the denoiser
        (pooled: None where it reads none); ModelLayoutError where none can be."""
        return cls.encode(pipe, prompts), None

    @classmethod
    def layers_note(cls) -> str | None:
        """What ``locopack layers`` says below this family's site table (None: nothing)."""
        pooled = "text also enters through a pooled embedding that is not a site"
        return pooled if cls.has_pooled_text_path else None

    @classmethod
    def attention_mask(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor | None:
        """(B, L) keep-mask of the text tokens, for families whose cross-attention masks
        padding; None where the sites attend to every position."""
        return None

    @classmethod
    def max_length(cls, pipe: DiffusionPipeline) -> int:
        """Sequence length of the site states."""
        return cls.tokenizer(pipe).model_max_length

    @classmethod
    def text_parts(cls, pipe: DiffusionPipeline) -> list[TextPart]:
        """The parts of the text sequence, one per encoder with positions of its own, in
        sequence order; most families have one (:attr:`encoder_name`'s tokens)."""
        return [
            TextPart(cls.encoder_name, 0, cls.max_length(pipe), cls.tokenizer(pipe), cls.preprocess)
        ]

    @classmethod
    def token_ids(cls, pipe: DiffusionPipeline, prompt: str) -> list[int]:
        """Token ids of ``prompt`` in the first part of the text sequence, without padding."""
        return cls.text_parts(pipe)[0].token_ids(prompt)

    @classmethod
    def concept_positions(cls, pipe: DiffusionPipeline, prompt: str, concept: str) -> list[int]:
        """Positions of ``concept``'s tokens inside ``prompt`` (case-insensitive, first match)
        in every part of the text sequence, in sequence order.

        Raises:
            ModelLayoutError: the concept does not occur in the prompt, or a part truncates it
                away.
        """
        return [
            part.start + i
            for part in cls.text_parts(pipe)
            for i in part.concept_positions(prompt, concept)
        ]

    @classmethod
    def last_token_position(cls, pipe: DiffusionPipeline, prompt: str) -> int:
        """Position of the last token before end-of-text in the first part."""
        return cls.text_parts(pipe)[0].last_token(prompt)

    @classmethod
    def content_positions(cls, pipe: DiffusionPipeline, prompt: str) -> list[int]:
        """All non-padding positions (start, words and end-of-text) of the first part."""
        return list(range(len(cls.token_ids(pipe, prompt))))

    # ---- twins -------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def build_twin(cls, seed: int = 0) -> DiffusionPipeline:
        """A tiny pipeline of this family with random weights seeded by ``seed``."""

    @classmethod
    def save_twin(cls, directory: str | Path, seed: int = 0) -> Path:
        """Build the tiny twin and ``save_pretrained`` it (safetensors) into ``directory``."""
        pipe = cls.build_twin(seed)
        pipe.save_pretrained(str(directory), safe_serialization=True)
        return Path(directory)

    @classmethod
    def call_kwargs(cls) -> dict[str, object]:
        """Extra arguments locopack passes to every pipeline call of this family."""
        return {}

    @classmethod
    def guided(cls, guidance: float) -> bool:
        """Whether the pipeline runs classifier-free guidance at ``guidance`` (two denoiser
        passes per image and step)."""
        return guidance > 1

    @classmethod
    def denoiser_passes(cls, images: int, guidance: float, swapped: bool) -> int:
        """Denoiser passes (one image through one step) of one denoising step of a pipeline
        call drawing ``images`` images; ``swapped``: LocoGen alters some site in the call
        (free here: the altered states are fed in place of the original ones)."""
        return images * (2 if cls.guided(guidance) else 1)

    @classmethod
    def with_t5_length(cls, length: int) -> type[ModelFamily]:
        """This family with ``length`` T5 tokens per prompt (families that have a settable
        T5 length override this).

        Raises:
            ModelLayoutError: the family's text length is not settable.
        """
        raise ModelLayoutError(
            f"{cls.pretty_name} takes no T5 length: remove base.max_sequence_length"
        )


class BlockOrderTransformer(ModelFamily):
    """A diffusion transformer told apart by its pipeline class, its sites in block order."""

    denoiser_attr: ClassVar[str] = "transformer"

    @classmethod
    def matches(cls, pipeline_class: str, denoiser_config: dict[str, object]) -> bool:
        return pipeline_class in cls.pipeline_classes

    @classmethod
    def order_key(cls, path: str) -> tuple:
        return natural_key(path)


class LowercasedPrompts:
    """Mixin for T5 pipelines (IF, PixArt) that lower-case and strip every prompt before
    tokenizing it (their ``_text_preprocessing`` with ``clean_caption=False``)."""

    @classmethod
    def preprocess(cls, prompt: str) -> str:
        return prompt.lower().strip()

    @classmethod
    def call_kwargs(cls) -> dict[str, object]:
        return {"clean_caption": False}
