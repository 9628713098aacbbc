"""LocoEdit's columns for transformers whose sites are text refiner blocks (Z-Image).

A refiner site's key/value inputs depend on the prompt alone, so they are computed by running
the text prefix on each prompt (:func:`locopack.models.text_refiner.prefix_io`), no denoising
needed.  The window's sites are solved in execution order, as for the joint-attention
transformers (:mod:`locopack.edit.joint`):

- ``X_i``: site i's inputs for the original prompts with the deltas of the sites before it
  applied (an edit upstream changes the refiner stream that reaches it);
- ``Y_i``: its inputs for the target prompts in the unedited model;
- ``P_i``: the preserve prompts' inputs, with the edits upstream applied.

One column per (prompt, token position) pair; positions index each prompt's own tokens (the
chat template's included), which are the first rows of its refiner sequence.  The refiner's
projections have no bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..delta import WeightDelta
from ..models.base import Site
from ..models.text_refiner import prefix_io
from .joint import SiteSolver, ordered_errors, solve_in_order
from .tokens import EditPrompts

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily
    from ..recipe.schema import Recipe


class RefinerColumns:
    """The encoded prompts of one edit and the columns each site reads from them."""

    @torch.no_grad()
    def __init__(
        self, pipe: DiffusionPipeline, family: type[ModelFamily], prompts: EditPrompts
    ) -> None:
        self.family, self.transformer = family, pipe.transformer
        self.originals = family.encode_texts(pipe, prompts.originals)
        self.targets = family.encode_texts(pipe, prompts.targets)
        self.preserve = family.encode_texts(pipe, prompts.preserve) if prompts.preserve else None
        self.x_picks = [(k, i) for k, i, _ in prompts.pairs]
        self.y_picks = [(k, j) for k, _, j in prompts.pairs]
        self.p_picks = prompts.preserve_at

    def _columns(self, texts, picks, sites: Sequence[Site]) -> dict[str, torch.Tensor]:
        found = prefix_io(self.family, self.transformer, texts, [site.key for site in sites])
        return {
            site.path: torch.stack([found[site.key][k][i] for k, i in picks], dim=1).double()
            for site in sites
        }

    def targets_at(self, sites: Sequence[Site]) -> dict[str, torch.Tensor]:
        """Y of every site, as the model is now."""
        return self._columns(self.targets, self.y_picks, sites)

    def edited_at(self, sites: Sequence[Site]) -> tuple[dict, dict | None]:
        """X and P of every site (None without preserve prompts), as the model is now."""
        x = self._columns(self.originals, self.x_picks, sites)
        if self.preserve is None:
            return x, None
        return x, self._columns(self.preserve, self.p_picks, sites)


@torch.no_grad()
def refiner_deltas(
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    recipe: Recipe,
    sites: list[Site],
    prompts: EditPrompts,
    solve: SiteSolver,
) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """LocoEdit of refiner ``sites`` in execution order, each solved by ``solve`` on columns
    computed with the deltas of the sites before it applied.

    Returns:
        ``(deltas, provenance entries)``: the column counts.
    """
    sites = sorted(sites, key=lambda site: site.index)
    columns = RefinerColumns(pipe, family, prompts)
    return solve_in_order(pipe.transformer, columns, sites, recipe.edit, solve)


@torch.no_grad()
def refiner_errors(
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    sites: list[Site],
    prompts: EditPrompts,
    delta: WeightDelta,
) -> dict[str, dict]:
    """Per edited matrix, :func:`~locopack.edit.closed_form.edit_report` on the columns the
    solve used (each site's inputs with every edit upstream applied)."""
    columns = RefinerColumns(pipe, family, prompts)
    return ordered_errors(pipe.transformer, columns, sites, delta)
