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
Under classifier-free guidance the batch is ``[unconditional; conditional]``; Chroma calls the
transformer apart for the negative prompt (``guidance_calls_apart``): a call whose text is not
the conditional prompt's is that call, and is left alone (the alongside run then covers the
conditional call only).  FLUX's optional "true CFG" (``true_cfg_scale`` > 1) would be such a
call too, unrecognized: locopack never enables it.  Where the family masks text padding
(Chroma's ``attention_mask``), the run alongside masks the altered prompt's padding; the real
call keeps the original prompt's mask, so at the window's sites the altered tokens beyond the
original prompt's length are masked as its padding is.  Qwen-Image's pipeline trims the text to
its batch's longest prompt (mask None where none is padded): each call and the altered prompts
are brought to one length first, the longer of the two, the rows added being padding under
the mask (which changes nothing: a text row's rotary position does not depend on the length).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from functools import singledispatch
from typing import TYPE_CHECKING

import torch

from ..errors import ModelLayoutError
from ..models.base import Site
from ..models.joint_attention import pad_rows
from ..models.text_sites import CrossAttention, JointAttention, TextRefiner, TextSites
from .cross import replace_conditional, swap_text_states, window_replacements
from .refiner import swap_refined_text

if TYPE_CHECKING:
    from ..models.base import ModelFamily

#: the name a window gives the pooled text path of a joint-attention transformer (not a site)
POOLED = "pooled_projections"


#: (altered states, conditional states, (name, text mask)) brought to one call's length
Fitted = tuple[torch.Tensor, torch.Tensor | None, tuple[str, torch.Tensor] | None]


class _AlongsideRun:
    """The hooks of one :func:`swap_text_stream`: record in the alongside run, then
    substitute in the real call (a negative prompt's call apart is left alone)."""

    def __init__(self, denoiser: torch.nn.Module, altered: torch.Tensor, rows: dict[str, list]):
        self.denoiser, self.altered, self.rows = denoiser, altered, rows
        self.text_mask: tuple[str, torch.Tensor] | None = None
        self.conditional: torch.Tensor | None = None
        self.recording = self.skipping = False
        self.recorded: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.text_length = 0
        #: the altered states, conditional states and text mask fitted to the call under way
        self.now: Fitted = (altered, None, None)

    def _is_negative_call(self, states: torch.Tensor) -> bool:
        """Whether a call's text is not the conditional prompt's (a negative prompt's call
        apart); only asked where the family makes such calls."""
        conditional = self.now[1]
        if conditional is None:
            return False
        rows = states[-conditional.shape[0] :]
        wanted = conditional.to(states.device, states.dtype).expand_as(rows)
        return rows.shape != conditional.shape or not torch.allclose(
            rows, wanted, rtol=1e-4, atol=1e-5
        )

    def _alongside(self, kwargs: dict) -> dict:
        states, (altered_states, _, text_mask) = kwargs["encoder_hidden_states"], self.now
        alongside = {
            **kwargs,
            "encoder_hidden_states": replace_conditional(
                states, altered_states, "the transformer's text input"
            ),
        }
        if text_mask is not None:
            name, altered = text_mask
            mask, length = kwargs.get(name), altered.shape[1]
            if mask is None:  # Qwen-Image's pipeline passes none where no prompt is padded
                mask = torch.ones(states.shape[:2], dtype=altered.dtype, device=states.device)
            text = replace_conditional(mask[:, :length], altered, f"the transformer's {name}")
            alongside[name] = torch.cat([text, mask[:, length:]], dim=1)
        return alongside

    def _fitted(self, kwargs: dict) -> dict:
        """The call with its text padded (under the mask) to one length with the altered
        prompts, which are cut or padded to it as well (in ``self.now``): the longer of the
        call's text and the altered prompts' own tokens.  Only where the family masks its
        text, and a change only where the pipeline trims the text to the batch's longest
        prompt (Qwen-Image); elsewhere the lengths agree already."""
        self.now = (self.altered, self.conditional, self.text_mask)
        if self.text_mask is None:
            return kwargs
        name, altered_mask = self.text_mask
        states, mask = kwargs["encoder_hidden_states"], kwargs.get(name)
        kept = altered_mask.bool().any(0).nonzero()
        length = max(states.shape[1], int(kept.max()) + 1 if len(kept) else 0)
        conditional = None if self.conditional is None else pad_rows(self.conditional, length)
        self.now = (
            pad_rows(self.altered, length),
            conditional,
            (name, pad_rows(altered_mask, length)),
        )
        if length == states.shape[1]:
            return kwargs
        if mask is None:
            mask = torch.ones(states.shape[:2], dtype=altered_mask.dtype, device=states.device)
        if mask.shape[1] != states.shape[1]:
            raise ModelLayoutError(
                f"the transformer's {name} also covers image tokens: its text cannot be padded"
            )
        text = {"encoder_hidden_states": pad_rows(states, length), name: pad_rows(mask, length)}
        return {**kwargs, **text}

    def before_call(self, _module, args, kwargs):
        if self.recording:
            return None
        if kwargs.get("encoder_hidden_states") is None:
            raise ModelLayoutError("the transformer was called without encoder_hidden_states")
        fitted = self._fitted(kwargs)
        states = fitted["encoder_hidden_states"]
        changed = None if fitted is kwargs else (args, fitted)
        self.skipping = self._is_negative_call(states)
        if self.skipping:
            return changed
        alongside = self._alongside(fitted)
        offset = states.shape[0] - self.altered.shape[0]
        self.text_length = states.shape[1]
        self.masks = {
            path: torch.tensor([False] * offset + chosen, device=states.device).view(-1, 1, 1)
            for path, chosen in self.rows.items()
        }
        self.recording = True
        try:
            self.denoiser(*args, **alongside)
        finally:
            self.recording = False
        return changed

    def after_call(self, _module, _args, _output):
        if not self.recording:
            self.recorded, self.masks, self.skipping = {}, {}, False

    def projection_hook(self, site: Site, module_path: str):
        def hook(_module, _inputs, output):
            if self.skipping:
                return None
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
    *,
    text_mask: tuple[str, torch.Tensor] | None = None,
    conditional: torch.Tensor | None = None,
) -> Iterator[None]:
    """Within the block, conditional sample ``b`` reads, at the sites of ``windows[b]``, the
    text keys/values of ``altered[b]``'s text stream run alongside.

    Args:
        denoiser: the pipeline's ``transformer``.
        sites: the family's sites of ``denoiser`` (:meth:`ModelFamily.sites`).
        altered: (n, L, D) transformer text inputs (the family's ``encode``), one per
            conditional sample.
        windows: for each conditional sample, the paths of the sites it reads altered.
        text_mask: (argument name, (n, L) text mask of the altered prompts) for a family
            that masks text padding: the run alongside masks the altered prompts' padding.
        conditional: (n, L, D) the conditional prompts' text inputs, for a family that calls
            the transformer apart for the negative prompt: a call whose text differs from
            these is that call, and is left alone.

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
    run.text_mask, run.conditional = text_mask, conditional
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


def _rows(one: torch.Tensor, n: int) -> torch.Tensor:
    return one.unsqueeze(0).expand(n, *one.shape)


@contextlib.contextmanager
def _joint_swap(family, denoiser, windows, texts, altered_pooled, pooled) -> Iterator[None]:
    """:func:`swap_text_stream` (and :func:`swap_pooled`) with what ``family`` needs:
    ``texts`` is (original, altered, altered text mask or None) of one prompt."""
    n = len(windows)
    original, altered, altered_mask = texts
    sites = [[path for path in window if path != POOLED] for window in windows]
    options = {}
    if family.text_mask_argument is not None and altered_mask is not None:
        options["text_mask"] = (family.text_mask_argument, _rows(altered_mask, n))
    if family.guidance_calls_apart:
        options["conditional"] = _rows(original, n)
    with contextlib.ExitStack() as stack:
        if any(pooled):
            stack.enter_context(swap_pooled(denoiser, _rows(altered_pooled, n), pooled))
        stack.enter_context(
            swap_text_stream(denoiser, family.sites(denoiser), _rows(altered, n), sites, **options)
        )
        yield


def swap_windows(
    family: type[ModelFamily],
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

    ``original``/``altered`` are one prompt's encoded states (L, D) (and, for PixArt,
    Chroma and Qwen-Image, its (L,) keep-masks).  Joint-attention families get
    :func:`swap_text_stream`, and a window that names :data:`POOLED` the altered prompt's
    pooled vector ``altered_pooled`` (P,); text-refiner families (Z-Image, Lumina-2)
    :func:`~locopack.hooks.refiner.swap_refined_text` of the prompts' real tokens
    (``*_mask``); the others :func:`~locopack.hooks.cross.swap_text_states` of the per-site
    states.

    Raises:
        ModelLayoutError: a window names :data:`POOLED` in a family without that path, or
            without ``altered_pooled``.
    """
    pooled = [POOLED in window for window in windows]
    kind = family.text_sites
    if any(pooled) and (not kind.swaps_pooled or altered_pooled is None):
        raise ModelLayoutError(
            f"a window names the pooled path, which {family.pretty_name} cannot swap here"
            if not kind.swaps_pooled
            else "a window names the pooled path but no altered pooled vector was given"
        )
    texts = _Texts(original, altered, original_mask, altered_mask, altered_pooled)
    return _swap(kind, family, denoiser, windows, texts, pooled)


@dataclass(frozen=True)
class _Texts:
    """One prompt's encoded states, original and altered, with their keep-masks and the
    altered prompt's pooled vector (each None where the family has none)."""

    original: torch.Tensor
    altered: torch.Tensor
    original_mask: torch.Tensor | None
    altered_mask: torch.Tensor | None
    altered_pooled: torch.Tensor | None


@singledispatch
def _swap(kind: TextSites, family, denoiser, windows, texts: _Texts, pooled: list[bool]):
    raise ModelLayoutError(f"{family.pretty_name}: LocoGen cannot swap {kind.name} sites")


@_swap.register
def _(kind: CrossAttention, family, denoiser, windows, texts: _Texts, pooled: list[bool]):
    paths = [site.path for site in family.sites(denoiser)]
    masks = None
    if texts.altered_mask is not None:
        masks = window_replacements(paths, windows, texts.original_mask, texts.altered_mask)
    states = window_replacements(paths, windows, texts.original, texts.altered)
    return swap_text_states(denoiser, states, masks)


@_swap.register
def _(kind: JointAttention, family, denoiser, windows, texts: _Texts, pooled: list[bool]):
    triple = (texts.original, texts.altered, texts.altered_mask)
    return _joint_swap(family, denoiser, windows, triple, texts.altered_pooled, pooled)


@_swap.register
def _(kind: TextRefiner, family, denoiser, windows, texts: _Texts, pooled: list[bool]):
    original = texts.original[texts.original_mask]
    return swap_refined_text(family, denoiser, windows, original, texts.altered[texts.altered_mask])
