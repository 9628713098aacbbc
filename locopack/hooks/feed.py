"""Give a denoiser encoded text that no prompt spells, wherever its kind of site reads it.

:func:`feeding` makes each conditional sample read given states (the space of the family's
:meth:`~locopack.models.ModelFamily.given_text`) for the duration of a block; the
unconditional half of a guided batch keeps its own.  Where the states go depends on the
family's kind of text site (:mod:`locopack.models.text_sites`):

- cross-attention: at every site (:func:`~locopack.hooks.cross.swap_text_states`);
- joint attention: at the transformer's text input (and, where given, its pooled vector),
  whose blocks carry the text on from there (Qwen-Image's text mask with it: its calls are as
  long as their longest prompt);
- text refiner: nowhere; its sites read each prompt's own rows through the refiner, which
  :meth:`~locopack.models.ModelFamily.given_text` already refuses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import singledispatch
from typing import TYPE_CHECKING

import torch

from ..errors import ModelLayoutError
from ..models.joint_attention import pad_rows
from ..models.text_sites import CrossAttention, JointAttention, TextSites
from .cross import replace_conditional, swap_text_states

if TYPE_CHECKING:
    from ..models.base import ModelFamily


def feeding(
    family: type[ModelFamily],
    denoiser: torch.nn.Module,
    states: torch.Tensor,
    pooled: torch.Tensor | None = None,
) -> contextlib.AbstractContextManager[None]:
    """Within the block, conditional sample ``b`` reads ``states[b]`` (and ``pooled[b]``
    where given and the family's denoiser reads a pooled vector) as its text."""
    return _feed(family.text_sites, family, denoiser, states, pooled)


@singledispatch
def _feed(kind: TextSites, family, denoiser, states, pooled) -> Iterator[None]:
    raise ModelLayoutError(f"{family.pretty_name}: no text can be given to its {kind.name} sites")


@_feed.register
@contextlib.contextmanager
def _(kind: CrossAttention, family, denoiser, states, pooled) -> Iterator[None]:
    with swap_text_states(denoiser, {site.path: states for site in family.sites(denoiser)}):
        yield


@_feed.register
@contextlib.contextmanager
def _(kind: JointAttention, family, denoiser, states, pooled) -> Iterator[None]:
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
