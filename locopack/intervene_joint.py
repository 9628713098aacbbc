"""LocoGen's swap for joint-attention transformers (SD3/SD3.5, FLUX.1), and one entry point
for every family.

In a joint-attention model every block computes the text tokens' keys and values from a text
stream of its own (:mod:`locopack.models.joint_attention`).  Replacing a block's text-stream
*input* would carry the change on past the window, so :func:`swap_text_stream` instead runs the
altered prompt's text stream alongside: for each denoiser call it first runs the transformer
once more on the same latent, timestep and pooled vector (the pooled path keeps the original
prompt) with the altered prompt's states in the conditional rows, records the text keys and
values of the window's sites, then lets the real call substitute them at those sites only.  In
FLUX's single-stream blocks only the text rows of ``to_k``/``to_v`` are substituted.  With no
window nothing runs; with the altered prompt equal to the original the substituted values are
the call's own, so the output is the pipeline's bit for bit.

The pooled CLIP vector (``pooled_projections``, into ``temb``) modulates every block: it is no
site and keeps the original prompt.  A window may name :data:`POOLED` instead of sites: that
sample then gets the altered prompt's pooled vector alone (:func:`swap_pooled`), the reference
line that shows how much of the prompt's effect travels that way.

The alongside run is a second denoiser pass of the full batch (the cost of a call doubles).
Under classifier-free guidance the batch is ``[unconditional; conditional]``; FLUX's optional
"true CFG" (``true_cfg_scale`` > 1) calls the transformer separately for the negative prompt,
which this swap would treat as conditional: locopack never enables it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import torch

from .errors import ModelLayoutError
from .intervene import replace_conditional, swap_text_states, window_replacements
from .intervene_refiner import swap_refined_text
from .models.base import Site

#: the name a window gives the pooled text path of a joint-attention transformer (not a site)
POOLED = "pooled_projections"


class _AlongsideRun:
    """The hooks of one :func:`swap_text_stream`: record in the alongside run, then
    substitute in the real call."""

    def __init__(self, denoiser: torch.nn.Module, altered: torch.Tensor, rows: dict[str, list]):
        self.denoiser, self.altered, self.rows = denoiser, altered, rows
        self.recording = False
        self.recorded: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.text_length = 0

    def before_call(self, _module, args, kwargs):
        if self.recording:
            return None
        states = kwargs.get("encoder_hidden_states")
        if states is None:
            raise ModelLayoutError("the transformer was called without encoder_hidden_states")
        alongside = replace_conditional(states, self.altered, "the transformer's text input")
        offset = states.shape[0] - self.altered.shape[0]
        self.text_length = states.shape[1]
        self.masks = {
            path: torch.tensor([False] * offset + chosen, device=states.device).view(-1, 1, 1)
            for path, chosen in self.rows.items()
        }
        self.recording = True
        try:
            self.denoiser(*args, **{**kwargs, "encoder_hidden_states": alongside})
        finally:
            self.recording = False
        return None

    def after_call(self, _module, _args, _output):
        if not self.recording:
            self.recorded, self.masks = {}, {}

    def projection_hook(self, site: Site, module_path: str):
        def hook(_module, _inputs, output):
            if self.recording:
                self.recorded[module_path] = output.detach()
                return None
            recorded, mask = self.recorded[module_path], self.masks[site.path]
            if site.text_only:
                return torch.where(mask, recorded, output)
            text = slice(0, self.text_length)
            output = output.clone()
            output[:, text] = torch.where(mask, recorded[:, text], output[:, text])
            return output

        return hook


@contextlib.contextmanager
def swap_text_stream(
    denoiser: torch.nn.Module,
    sites: Sequence[Site],
    altered: torch.Tensor,
    windows: Sequence[Collection[str]],
) -> Iterator[None]:
    """Within the block, conditional sample ``b`` reads, at the sites of ``windows[b]``, the
    text keys/values of ``altered[b]``'s text stream run alongside.

    Args:
        denoiser: the pipeline's ``transformer``.
        sites: the family's sites of ``denoiser`` (:meth:`ModelFamily.sites`).
        altered: (n, L, D) transformer text inputs (the family's ``encode``), one per
            conditional sample.
        windows: for each conditional sample, the paths of the sites it reads altered.

    Raises:
        ModelLayoutError: a window names no site, or the batch does not fit ``altered``.
    """
    if len(windows) != altered.shape[0]:
        raise ModelLayoutError(
            f"{len(windows)} windows for {altered.shape[0]} altered samples; give one each"
        )
    known = {site.path for site in sites}
    unknown = sorted({path for window in windows for path in window} - known)
    if unknown:
        raise ModelLayoutError(f"{unknown[0]!r} is not a site of this transformer")
    rows = {s.path: [s.path in window for window in windows] for s in sites}
    rows = {path: chosen for path, chosen in rows.items() if any(chosen)}
    if not rows:
        yield
        return
    run = _AlongsideRun(denoiser, altered, rows)
    handles = [
        denoiser.register_forward_pre_hook(run.before_call, with_kwargs=True),
        denoiser.register_forward_hook(run.after_call),
    ]
    try:
        for site in sites:
            if site.path in rows:
                for module_path in (site.key, site.value):
                    module = denoiser.get_submodule(module_path)
                    handles.append(
                        module.register_forward_hook(run.projection_hook(site, module_path))
                    )
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def swap_pooled(denoiser: torch.nn.Module, pooled: torch.Tensor, chosen: Sequence[bool]):
    """Within the block, conditional sample ``b`` gets ``pooled[b]`` as its pooled vector
    where ``chosen[b]``, and keeps the pipeline's elsewhere.

    Raises:
        ModelLayoutError: the transformer is called without ``pooled_projections`` or with a
            batch that does not fit ``pooled``.
    """
    if not any(chosen):
        yield
        return

    def hook(_module, args, kwargs):
        current = kwargs.get("pooled_projections")
        if current is None:
            raise ModelLayoutError("the transformer was called without pooled_projections")
        replaced = replace_conditional(current, pooled, "the transformer's pooled input")
        offset = current.shape[0] - pooled.shape[0]
        mask = torch.tensor([False] * offset + list(chosen), device=current.device).view(-1, 1)
        return args, {**kwargs, "pooled_projections": torch.where(mask, replaced, current)}

    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _joint_swap(family, denoiser, windows, altered, altered_pooled, pooled) -> Iterator[None]:
    n = len(windows)
    sites = [[path for path in window if path != POOLED] for window in windows]
    with contextlib.ExitStack() as stack:
        if any(pooled):
            batch = altered_pooled.unsqueeze(0).expand(n, *altered_pooled.shape)
            stack.enter_context(swap_pooled(denoiser, batch, pooled))
        batch = altered.unsqueeze(0).expand(n, *altered.shape)
        stack.enter_context(swap_text_stream(denoiser, family.sites(denoiser), batch, sites))
        yield


def swap_windows(
    family: Any,
    denoiser: torch.nn.Module,
    windows: list[list[str]],
    original: torch.Tensor,
    altered: torch.Tensor,
    original_mask: torch.Tensor | None = None,
    altered_mask: torch.Tensor | None = None,
    *,
    altered_pooled: torch.Tensor | None = None,
) -> contextlib.AbstractContextManager:
    """LocoGen's intervention for any family: sample ``b`` reads the altered prompt at the
    sites of ``windows[b]`` and the original everywhere else.

    ``original``/``altered`` are one prompt's encoded states (L, D) (and, for PixArt, its
    (L,) keep-masks).  Joint-attention families get :func:`swap_text_stream`, and a window
    that names :data:`POOLED` the altered prompt's pooled vector ``altered_pooled`` (P,);
    text-refiner families (Z-Image) :func:`~locopack.intervene_refiner.swap_refined_text` of
    the prompts' real tokens (``*_mask``); the others
    :func:`~locopack.intervene.swap_text_states` of the per-site states.

    Raises:
        ModelLayoutError: a window names :data:`POOLED` in a family without that path, or
            without ``altered_pooled``.
    """
    pooled = [POOLED in window for window in windows]
    if family.refines_text and not any(pooled):
        return swap_refined_text(
            family, denoiser, windows, original[original_mask], altered[altered_mask]
        )
    if any(pooled) and (not family.joint_attention or altered_pooled is None):
        raise ModelLayoutError(
            f"a window names the pooled path, which {family.pretty_name} cannot swap here"
            if not family.joint_attention
            else "a window names the pooled path but no altered pooled vector was given"
        )
    if family.joint_attention:
        return _joint_swap(family, denoiser, windows, altered, altered_pooled, pooled)
    paths = [site.path for site in family.sites(denoiser)]
    masks = None
    if altered_mask is not None:
        masks = window_replacements(paths, windows, original_mask, altered_mask)
    return swap_text_states(denoiser, window_replacements(paths, windows, original, altered), masks)
