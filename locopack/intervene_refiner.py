"""LocoGen's swap for transformers whose sites are text refiner blocks (Z-Image).

A refiner site's keys and values are a function of the prompt alone
(:mod:`locopack.models.text_refiner`), so the altered prompt's keys and values at every site of
the windows are computed once, by running the text prefix on the altered prompt, and a forward
hook on each of those projections substitutes them in the conditional rows whose window names
the site.  No second denoiser pass is needed.  The substituted rows are the prompt's text rows
as the refiner pads them; the altered prompt must fill as many rows as the original (Z-Image:
both within the same multiple of 32 tokens, chat template included).  With the altered prompt
equal to the original the substituted values are the call's own: the output is the pipeline's
bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from .errors import ModelLayoutError
from .models.text_refiner import TextRefinerFamily, prefix_io


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
    if rows != altered_rows:
        raise ModelLayoutError(
            f"the altered prompt fills {altered_rows} text rows of {family.pretty_name}'s "
            f"refiner, the original {rows}: a swap needs prompts of the same padded length; "
            "shorten the longer prompt"
        )
    recorded = prefix_io(family, denoiser, [altered], list(modules), outputs=True)
    replacement = {module: outputs[0] for module, outputs in recorded.items()}
    n = len(windows)

    def hook_for(module: str):
        picked = modules[module]

        def hook(_module, _inputs, output):
            if output.shape[0] not in (n, 2 * n):
                raise ModelLayoutError(
                    f"the transformer batch has {output.shape[0]} samples for {n} windows; "
                    "give one window per conditional sample"
                )
            cond = family.conditional_rows(output.shape[0], n)
            output = output.clone()
            for b, row in enumerate(cond):
                if picked[b]:
                    output[row, :rows] = replacement[module].to(output.dtype)
            return output

        return hook

    handles = [
        denoiser.get_submodule(module).register_forward_hook(hook_for(module)) for module in modules
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
