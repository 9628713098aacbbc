"""Give a model text that no prompt spells: encoded states, or token embeddings.

:func:`feeding` makes each conditional sample read given states (the space of the family's
``encode``) wherever text enters the denoiser: at every site for cross-attention families
(:func:`~locopack.hooks.cross.swap_text_states`), at the transformer's text input (and, where
given, its pooled vector) for joint-attention ones, whose blocks carry the text on from there
(Qwen-Image's text mask with it: its calls are as long as their longest prompt).
The unconditional half of a guided batch keeps its own.

:func:`soft_tokens` replaces, inside every text encoder of a pipeline (CLIP and T5 alike), the
input embeddings of a placeholder word by continuous vectors, so that the pipeline's own
encoding (pooled vectors included) carries them; a prompt without the placeholder, such as
the empty negative prompt, is left as it is.  :func:`placeholder` picks that word.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from ...errors import ModelLayoutError
from ...hooks.cross import replace_conditional, swap_text_states
from ...models.joint_attention import pad_rows

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from transformers import PreTrainedTokenizerBase

    from ...models.base import ModelFamily


def text_encoders(
    pipe: DiffusionPipeline,
) -> list[tuple[str, PreTrainedTokenizerBase, torch.nn.Module]]:
    """``(name, tokenizer, encoder)`` of every text encoder the pipeline has."""
    found = []
    for suffix in ("", "_2", "_3"):
        tokenizer = getattr(pipe, f"tokenizer{suffix}", None)
        encoder = getattr(pipe, f"text_encoder{suffix}", None)
        if tokenizer is not None and encoder is not None:
            found.append((f"text_encoder{suffix}", tokenizer, encoder))
    return found


def single_token(tokenizer: PreTrainedTokenizerBase, word: str) -> int | None:
    """The id of ``word`` where ``tokenizer`` makes it one known token, else None."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    unknown = getattr(tokenizer, "unk_token_id", None)
    return ids[0] if len(ids) == 1 and ids[0] != unknown else None


def placeholder(pipe: DiffusionPipeline, words: list[str], avoid: str) -> str | None:
    """The first of ``words`` that every tokenizer of ``pipe`` makes one token and that
    ``avoid`` (the template) does not contain; None where there is none."""
    encoders = text_encoders(pipe)
    taken = set(avoid.lower().split())
    for word in words:
        if word not in taken and all(single_token(t, word) is not None for _, t, _ in encoders):
            return word
    return None


def _token_embeddings(encoder: torch.nn.Module) -> list[torch.nn.Module]:
    """Every embedding module of ``encoder`` that holds its input embeddings' table (T5's
    encoder stack calls its own ``embed_tokens``, tied to ``shared``)."""
    table = encoder.get_input_embeddings().weight
    return [m for m in encoder.modules() if getattr(m, "weight", None) is table]


@contextlib.contextmanager
def soft_tokens(
    pipe: DiffusionPipeline, word: str, embeddings: dict[str, torch.Tensor]
) -> Iterator[None]:
    """Within the block, the j-th ``word`` of a prompt enters text encoder ``name`` as
    ``embeddings[name][j]`` (k, D) instead of its token embedding, for prompts that hold
    ``word`` k times; gradients flow to the embeddings."""
    handles = []
    try:
        for name, tokenizer, encoder in text_encoders(pipe):
            token, vectors = single_token(tokenizer, word), embeddings[name]

            def hook(_module, inputs, output, token=token, vectors=vectors):
                mask = inputs[0] == token
                if not mask.any():
                    return None
                order = (mask.long().cumsum(1) - 1)[mask] % vectors.shape[0]
                output = output.clone()
                output[mask] = vectors[order].to(output.dtype)
                return output

            for module in _token_embeddings(encoder):
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def feeding(
    family: type[ModelFamily],
    denoiser: torch.nn.Module,
    states: torch.Tensor,
    pooled: torch.Tensor | None = None,
) -> Iterator[None]:
    """Within the block, conditional sample ``b`` reads ``states[b]`` (and, for joint-attention
    families, ``pooled[b]`` where given) as its text; see the module docstring."""
    if not family.joint_attention:
        sites = family.sites(denoiser)
        with swap_text_states(denoiser, {site.path: states for site in sites}):
            yield
        return

    def hook(_module, args, kwargs):
        kwargs = {**kwargs, **_given_text(family, kwargs, states)}
        if pooled is not None:
            kwargs["pooled_projections"] = replace_conditional(
                kwargs["pooled_projections"], pooled, "the transformer's pooled input"
            )
        return args, kwargs

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _given_text(
    family: type[ModelFamily], kwargs: dict[str, torch.Tensor], states: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The transformer's text arguments with ``states`` in the conditional rows.  Where the
    family masks text padding with a text-only mask and its pipeline trims the text to the
    batch's longest prompt (Qwen-Image), the call and ``states`` are brought to one length, the
    longer of the call's text and the rows ``states`` fill, and a given row is masked where it
    is all zero (the padding its ``encode`` adds)."""
    where, current = "the transformer's text input", kwargs["encoder_hidden_states"]
    name = family.text_mask_argument
    mask = None if name is None else kwargs.get(name)
    if name is None or (mask is not None and mask.shape[1] != current.shape[1]):
        return {"encoder_hidden_states": replace_conditional(current, states, where)}
    filled = states.detach().abs().sum(-1) > 0
    rows = filled.any(0).nonzero()
    length = max(current.shape[1], int(rows.max()) + 1 if len(rows) else 1)
    if mask is None:  # no prompt of the call is padded
        mask = torch.ones(current.shape[:2], dtype=torch.long, device=current.device)
    mask = pad_rows(mask, length)
    given = pad_rows(filled, length)
    return {
        "encoder_hidden_states": replace_conditional(
            pad_rows(current, length), pad_rows(states, length), where
        ),
        name: replace_conditional(mask, given, f"the transformer's {name}"),
    }


def encode(
    family: type[ModelFamily], pipe: DiffusionPipeline, prompts: list[str]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(states, pooled)`` of ``prompts`` as :func:`feeding` takes them (pooled: None where
    the family has no pooled vector the transformer reads).

    Raises:
        ModelLayoutError: the family refines its text first (Z-Image, Lumina-2): its sites
            read each prompt's own rows through the refiner, so no given states replace them.
    """
    if family.refines_text:
        raise ModelLayoutError(
            f"{family.pretty_name} passes each prompt's own rows through a text refiner first"
        )
    if family.joint_attention:
        return family.encode_with_pooled(pipe, prompts)
    return family.encode(pipe, prompts), None
