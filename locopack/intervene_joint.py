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
from .models.base import Site


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


def swap_windows(
    family: Any,
    denoiser: torch.nn.Module,
    windows: list[list[str]],
    original: torch.Tensor,
    altered: torch.Tensor,
    original_mask: torch.Tensor | None = None,
    altered_mask: torch.Tensor | None = None,
) -> contextlib.AbstractContextManager:
    """LocoGen's intervention for any family: sample ``b`` reads the altered prompt at the
    sites of ``windows[b]`` and the original everywhere else.

    ``original``/``altered`` are one prompt's encoded states (L, D) (and, for PixArt, its
    (L,) keep-masks).  Joint-attention families get :func:`swap_text_stream`; the others
    :func:`~locopack.intervene.swap_text_states` of the per-site states.
    """
    if family.joint_attention:
        batch = altered.unsqueeze(0).expand(len(windows), *altered.shape)
        return swap_text_stream(denoiser, family.sites(denoiser), batch, windows)
    paths = [site.path for site in family.sites(denoiser)]
    masks = None
    if altered_mask is not None:
        masks = window_replacements(paths, windows, original_mask, altered_mask)
    return swap_text_states(denoiser, window_replacements(paths, windows, original, altered), masks)
