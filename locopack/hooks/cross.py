"""Feed chosen text-conditioning sites a different encoder state, reversibly.

:func:`swap_text_states` is a context manager keyed by site module path (the idiom of
TransformerLens' ``hooks()`` and baukit's ``TraceDict``): for the duration of the block, each
listed site's attention module receives the given states instead of the pipeline's, **per
sample** of the conditional batch; every other site sees the original.  Under classifier-free
guidance the denoiser's batch is ``[unconditional; conditional]`` (the order diffusers uses in
every supported pipeline) and only the conditional half is replaced.  Hooks are removed in
``finally``, also after an exception.

The replacement happens at the attention module's ``encoder_hidden_states`` argument, i.e.
after any projection the family applies first (IF's ``encoder_hid_proj``, PixArt's
``caption_projection``), which is the space :meth:`ModelFamily.encode` returns.

SD-XL and IF also feed a *pooled* text embedding into the time embedding; that path is not a
site and keeps the pipeline's (original) prompt.  Intervening on every site of those families
therefore does not reproduce the other prompt's image exactly (SD-XL differs by ~1e-2).

Joint-attention transformers (SD3, FLUX) compute each block's text keys/values from a text
stream of their own; replacing that input would carry the change past the window, so they get
the swap of :mod:`locopack.hooks.joint` instead (``swap_windows`` picks the right one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch

from ..errors import ModelLayoutError


def replace_conditional(
    original: torch.Tensor, replacement: torch.Tensor, where: str
) -> torch.Tensor:
    """``original`` (the denoiser's batch) with its conditional rows replaced.

    The batch is either the ``n`` conditional samples of ``replacement`` or, under
    classifier-free guidance, ``[unconditional; conditional]`` with ``2n`` rows, whose
    unconditional half is kept.  ``where`` names the place in error messages.
    """
    n = replacement.shape[0]
    batch = original.shape[0]
    if replacement.shape[1:] != original.shape[1:]:
        raise ModelLayoutError(
            f"{where}: replacement states have shape {tuple(replacement.shape[1:])} per "
            f"sample, the denoiser's have {tuple(original.shape[1:])}; encode them with the "
            "model family's encode()"
        )
    replacement = replacement.to(original.device, original.dtype)
    if batch == n:
        return replacement
    if batch == 2 * n:  # classifier-free guidance: [uncond; cond], alter only the cond half
        return torch.cat([original[:n], replacement], dim=0)
    raise ModelLayoutError(
        f"{where}: the denoiser batch has {batch} samples, but replacements were given for "
        f"{n}; give one per conditional sample"
    )


def _mask_bias(original: torch.Tensor, mask: torch.Tensor, path: str) -> torch.Tensor:
    """A (B, L) keep-mask as the (B, 1, L) additive bias PixArt passes its attention."""
    bias = (1 - mask.to(original.dtype)) * -10000.0
    return replace_conditional(original, bias.unsqueeze(1), f"site {path}")


@contextlib.contextmanager
def swap_text_states(
    denoiser: torch.nn.Module,
    replacements: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Within the block, site ``path`` reads ``replacements[path]`` (B, L, D) as its text.

    Args:
        denoiser: the pipeline's ``unet`` or ``transformer``.
        replacements: {site module path: states for each conditional sample}.  Row ``b`` is
            what sample ``b`` sees at that site; give the original states in rows that should
            not change.
        masks: for families whose cross-attention masks padding (PixArt), {site path: (B, L)
            token keep-mask of the replacement prompts}; without it the original prompt's mask
            would hide the replacement's extra tokens.

    Raises:
        ModelLayoutError: a path is not a module of the denoiser, or shapes do not fit.
    """
    handles = []
    try:
        for path, states in replacements.items():
            try:
                module = denoiser.get_submodule(path)
            except AttributeError:
                raise ModelLayoutError(f"the denoiser has no module {path!r}") from None

            def hook(_module, args, kwargs, path=path, states=states):
                if kwargs.get("encoder_hidden_states") is not None:
                    kwargs = dict(kwargs)
                    kwargs["encoder_hidden_states"] = replace_conditional(
                        kwargs["encoder_hidden_states"], states, f"site {path}"
                    )
                elif len(args) > 1 and args[1] is not None:
                    replaced = replace_conditional(args[1], states, f"site {path}")
                    args = (args[0], replaced, *args[2:])
                else:
                    raise ModelLayoutError(f"site {path} was called without text states")
                mask = (masks or {}).get(path)
                if mask is not None and kwargs.get("attention_mask") is not None:
                    kwargs["attention_mask"] = _mask_bias(kwargs["attention_mask"], mask, path)
                return args, kwargs

            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def window_replacements(
    site_paths: list[str],
    windows: list[list[str]],
    original: torch.Tensor,
    altered: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Replacements that give sample ``b`` the ``altered`` value at the sites of
    ``windows[b]`` and the ``original`` value everywhere else.

    Args:
        site_paths: every site of the model.
        windows: one list of site paths per sample.
        original: one sample's value for the original prompt: states (L, D) or a mask (L,).
        altered: the same for the altered prompt.
    """
    batch = len(windows)
    original = original.unsqueeze(0).expand(batch, *original.shape)
    altered = altered.unsqueeze(0).expand(batch, *altered.shape)
    out = {}
    for path in site_paths:
        chosen = torch.tensor([path in window for window in windows])
        if chosen.any():
            out[path] = torch.where(chosen.view(-1, *[1] * (original.dim() - 1)), altered, original)
    return out
