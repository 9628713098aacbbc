"""LocoGen's swap for transformers whose sites are text refiner blocks (Z-Image, Lumina-2).

A refiner site's keys and values are a function of the prompt alone
(:mod:`locopack.models.text_refiner`), so the altered prompt's keys and values at every site of
the windows are computed once, by running the text prefix on the altered prompt, and a forward
hook on each of those projections substitutes them in the conditional rows whose window names
the site (a call's conditional rows are those whose text is the original prompt's).  No second
denoiser pass is needed.  The substituted rows are the prompt's text rows as the refiner pads
them.  Where the refiner masks the rows past a prompt's own (Lumina-2), the window's attention
gets the altered prompt's mask too; elsewhere the altered prompt must fill as many rows as the
original (Z-Image: both within the same multiple of 32 tokens, chat template included).  With
the altered prompt equal to the original the substituted values are the call's own: the output
is the pipeline's bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from ..errors import ModelLayoutError
from ..models.text_refiner import TextRefinerFamily, prefix_io


@contextlib.contextmanager
def swap_refined_text(
    family: type[TextRefinerFamily],
    denoiser: torch.nn.Module,
    windows: Sequence[Sequence[str]],
    original: torch.Tensor,
    altered: torch.Tensor,
) -> Iterator[None]:
    """Within the block, conditional sample ``b`` reads, at the sites of ``windows[b]``, the
    keys and values of ``altered``'s refiner stream.

    Args:
        family: the model's family.
        denoiser: the pipeline's transformer.
        windows: for each conditional sample, the paths of the sites it reads altered.
        original: the original prompt's text as the transformer receives it, (L_o, D).
        altered: the altered prompt's, (L_a, D).

    Raises:
        ModelLayoutError: a window names no site, or the two prompts fill different rows.
    """
    sites = family.sites(denoiser)
    unknown = sorted({path for window in windows for path in window} - {s.path for s in sites})
    if unknown:
        raise ModelLayoutError(f"{unknown[0]!r} is not a site of this transformer")
    chosen = {s.path: [s.path in window for window in windows] for s in sites}
    modules = {m: chosen[s.path] for s in sites if any(chosen[s.path]) for m in (s.key, s.value)}
    if not modules:
        yield
        return
    rows, altered_rows = family.text_rows([len(original), len(altered)])
    if rows != altered_rows and not family.masks_text:
        raise ModelLayoutError(
            f"the altered prompt fills {altered_rows} text rows of {family.pretty_name}'s "
            f"refiner, the original {rows}: a swap needs prompts of the same padded length; "
            "shorten the longer prompt"
        )
    recorded = prefix_io(family, denoiser, [altered], list(modules), outputs=True)
    replacement = {module: outputs[0] for module, outputs in recorded.items()}
    call = _Call(family, original, len(windows))

    def output_hook(module: str):
        picked = modules[module]

        def hook(_module, _inputs, output):
            output = output.clone()
            for b, row in enumerate(call.rows):
                if picked[b]:
                    output[row, :altered_rows] = replacement[module].to(output.dtype)
            return output

        return hook

    def mask_hook(picked: list[bool]):
        def hook(_module, args, kwargs):
            mask = kwargs.get("attention_mask")
            if mask is None:
                raise ModelLayoutError("a refiner attention was called without its text mask")
            mask = mask.bool().clone()
            for b, row in enumerate(call.rows):
                if picked[b]:
                    mask[row] = False
                    mask[row, :altered_rows] = True
            return args, {**kwargs, "attention_mask": mask}

        return hook

    handles = [denoiser.register_forward_pre_hook(call.before, with_kwargs=True)]
    try:
        for site in sites:
            if any(chosen[site.path]) and family.masks_text:
                attn = denoiser.get_submodule(site.path)
                handles.append(
                    attn.register_forward_pre_hook(mask_hook(chosen[site.path]), with_kwargs=True)
                )
        for module in modules:
            handles.append(
                denoiser.get_submodule(module).register_forward_hook(output_hook(module))
            )
        yield
    finally:
        for handle in handles:
            handle.remove()


class _Call:
    """Which rows of each transformer call hold the conditional samples: those whose text
    is the original prompt's (a pipeline may batch the unconditional ones with them, before or
    after, or call the transformer for them separately)."""

    def __init__(self, family: type[TextRefinerFamily], original: torch.Tensor, n: int):
        self.family, self.original, self.n = family, original, n
        self.rows: list[int] = []

    def before(self, _module, args, kwargs):
        texts = self.family.call_texts(args, kwargs)
        self.rows = [
            i
            for i, text in enumerate(texts)
            if text.shape == self.original.shape
            and torch.allclose(text.float(), self.original.to(text.device).float(), atol=1e-4)
        ]
        if self.rows and len(self.rows) != self.n:
            raise ModelLayoutError(
                f"the transformer call holds {len(self.rows)} samples of the original prompt "
                f"for {self.n} windows; give one window per conditional sample"
            )
