"""Give a model text that no prompt spells: token embeddings (encoded states are given by
:func:`locopack.hooks.feed.feeding`).

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

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from transformers import PreTrainedTokenizerBase


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
