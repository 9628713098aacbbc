"""Activations of key/value projections on prompts, for neuron-level editing.

One sample per prompt: the projection's output averaged over every position of the text
sequence (padding included), because the neuron override replaces the output at every position
with one constant; its value is then the mean of what the neuron emits for neutral prompts.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from ..errors import EditError
from ..fingerprint import fingerprints_by_dtype, model_fingerprint
from .neurons import NeuronEdit, select_neurons

_MATRICES = {"key": ("key",), "value": ("value",), "both": ("key", "value")}


@torch.no_grad()
def projection_activations(
    pipe: Any, family: Any, prompts: list[str], layers: list[str], matrices: str = "both"
) -> dict[str, torch.Tensor]:
    """{projection module path: (prompts, out_features) mean activations} at ``layers``."""
    denoiser = getattr(pipe, family.denoiser_attr)
    states = family.encode(pipe, prompts)
    sites = {s.path: s for s in family.sites(denoiser)}
    out = {}
    for path in layers:
        site = sites[path]
        inputs = family.site_states(denoiser, site, states)
        for which in _MATRICES[matrices]:
            module_path = getattr(site, which)
            module = denoiser.get_submodule(module_path)
            out[module_path] = module(inputs.to(module.weight.dtype)).float().mean(dim=1)
    return out


def neuron_edit_for(
    pipe: Any, family: Any, recipe: Any, layers: list[str], top_k: int
) -> NeuronEdit:
    """Neuron edit of ``recipe``: its edits' prompts are the attribute prompts, their targets and
    the preserve prompts the neutral ones (Welch's t, global top-k; see ``neurons``)."""
    attribute = [p for edit in recipe.edits for p in edit.originals()]
    neutral = [t for edit in recipe.edits for t in edit.targets_expanded()]
    neutral += list(recipe.preserve) + [p for edit in recipe.edits for p in edit.preserve]
    neutral = list(dict.fromkeys(neutral))
    if len(attribute) < 2 or len(neutral) < 2:
        raise EditError(
            f"neuron editing compares two groups of prompts and needs at least 2 in each; the "
            f"recipe has {len(attribute)} attribute prompt(s) (edits' prompts) and "
            f"{len(neutral)} distinct neutral prompt(s) (targets and preserve prompts); "
            "add preserve prompts to the recipe"
        )
    matrices = recipe.edit.matrices
    edit = select_neurons(
        projection_activations(pipe, family, attribute, layers, matrices),
        projection_activations(pipe, family, neutral, layers, matrices),
        top_k,
    )
    fingerprint = model_fingerprint(pipe, family)
    edit.metadata.update(
        {
            "recipe_name": recipe.name,
            "recipe_sha256": recipe.sha256,
            "base_model": recipe.base.model,
            "base_fingerprint": fingerprint,
            "base_fingerprints": json.dumps(fingerprints_by_dtype(pipe, family, fingerprint)),
            "family": family.name,
            "denoiser": family.denoiser_attr,
            "layers": ",".join(layers),
            "top_k": str(top_k),
            "statistic": "welch_t",
            "attribute_prompts": str(len(attribute)),
            "neutral_prompts": str(len(neutral)),
        }
    )
    return edit
