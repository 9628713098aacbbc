"""Activations of key/value projections on prompts, for neuron-level editing.

One sample per prompt: the projection's output averaged over every position of the text
sequence (padding included), because the neuron override replaces the output at every position
with one constant; its value is then the mean of what the neuron emits for neutral prompts.

In joint-attention transformers (SD3, FLUX) a site reads its block's own text stream, so the
activations are taken while denoising (:mod:`locopack.edit.stream`, at the recipe's
``edit.seeds`` x ``edit.timesteps``) and averaged over those probes too; where the family
masks text padding (Chroma, Qwen-Image) the masked rows, which no attention reads, are left
out (Qwen-Image pads every prompt to its text length, a number of rows that would otherwise
weigh in).  There the override
makes sense at double-stream (joint) blocks, whose ``add_k_proj``/``add_v_proj`` emit text
rows only; FLUX's single-stream ``to_k``/``to_v`` emit the image tokens' rows as well, which a
constant override would flatten, so those sites are refused.  Text-refiner sites (Z-Image)
read the prompt alone: their activations come from running the text prefix on each prompt,
averaged over its text rows (the refiner's padding rows included).
"""

from __future__ import annotations

import json
from functools import singledispatch
from typing import TYPE_CHECKING

import torch

from ..errors import EditError
from ..fingerprint import fingerprints_by_dtype
from ..models.base import Site
from ..models.text_refiner import prefix_io
from ..models.text_sites import CrossAttention, JointAttention, TextRefiner, TextSites
from ..prompt_samples import neighbours
from .neurons import NeuronEdit, select_neurons
from .stream import Group, record_probes, site_columns

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily
    from ..models.loaded import LoadedBase
    from ..recipe.schema import Recipe

_MATRICES = {"key": ("key",), "value": ("value",), "both": ("key", "value")}


@torch.no_grad()
def projection_activations(
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    prompts: list[str],
    layers: list[str],
    matrices: str = "both",
    recipe: Recipe = None,
) -> dict[str, torch.Tensor]:
    """{projection module path: (prompts, out_features) mean activations} at ``layers``.

    Joint-attention families need ``recipe`` (its denoising settings and ``edit.seeds`` /
    ``edit.timesteps``).

    Raises:
        EditError: a joint-attention family without ``recipe``, or a site that also maps
            image tokens.
    """
    sites = {s.path: s for s in family.sites(getattr(pipe, family.denoiser_attr))}
    chosen = [sites[path] for path in layers]
    return _activations(family.text_sites, pipe, family, prompts, chosen, matrices, recipe)


@singledispatch
def _activations(
    kind: TextSites,
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    prompts: list[str],
    sites: list[Site],
    matrices: str,
    recipe: Recipe | None,
) -> dict[str, torch.Tensor]:
    """:func:`projection_activations` by the family's kind of site."""
    raise EditError(f"{family.pretty_name}: no activations of {kind.name} sites")


@_activations.register
def _(kind: CrossAttention, pipe, family, prompts, sites, matrices, recipe):
    denoiser = getattr(pipe, family.denoiser_attr)
    states = family.encode(pipe, prompts)
    out = {}
    for site in sites:
        inputs = family.site_states(denoiser, site, states)
        for which in _MATRICES[matrices]:
            module_path = getattr(site, which)
            module = denoiser.get_submodule(module_path)
            out[module_path] = module(inputs.to(module.weight.dtype)).float().mean(dim=1)
    return out


@_activations.register
def _(kind: TextRefiner, pipe, family, prompts, sites, matrices, recipe):
    """Refiner sites read the prompt alone, padded rows included."""
    texts = family.encode_texts(pipe, prompts)
    modules = [getattr(site, which) for site in sites for which in _MATRICES[matrices]]
    found = prefix_io(family, getattr(pipe, family.denoiser_attr), texts, modules, outputs=True)
    return {m: torch.stack([rows.float().mean(dim=0) for rows in found[m]]) for m in modules}


@_activations.register
def _(kind: JointAttention, pipe, family, prompts, sites, matrices, recipe):
    """From site inputs collected while denoising."""
    image = [site.path for site in sites if not site.text_only]
    if image:
        raise EditError(
            f"neuron editing overrides a projection's whole output, and {image[0]} is a "
            f"{family.pretty_name} single-stream site whose to_k/to_v also emit the image "
            "tokens' keys/values; choose double-stream blocks (transformer_blocks.*)"
        )
    if recipe is None:
        raise EditError(f"{family.pretty_name} activations are collected with a recipe's settings")
    text = family.text_arguments(pipe, prompts)
    probes = record_probes(pipe, family, prompts, recipe)
    n, length = text["encoder_hidden_states"].shape[:2]
    picks = [(k, i) for k in range(n) for i in range(length)]
    inputs = site_columns(pipe.transformer, sites, Group(text, probes), picks)
    # rows under the family's text mask (Chroma, Qwen-Image) are read by no attention
    mask = text.get(family.text_mask_argument or "")
    kept = torch.ones(n, length) if mask is None else mask[:, :length].float()
    kept = kept.view(1, n, length, 1)
    out = {}
    for site in sites:
        x = inputs[site.path].T.reshape(len(probes), n, length, -1)
        for which in _MATRICES[matrices]:
            module_path = getattr(site, which)
            module = pipe.transformer.get_submodule(module_path)
            y = module(x.to(module.weight.device, module.weight.dtype)).float()
            weights = kept.to(y.device)
            out[module_path] = (y * weights).sum(dim=(0, 2)) / (len(probes) * weights.sum((0, 2)))
    return out


def neuron_prompts(recipe: Recipe) -> tuple[list[str], list[str]]:
    """The attribute prompts (the edits' prompts) and the distinct neutral ones (their targets,
    the preserve prompts and the recipe's neighbours) that rank the neurons."""
    attribute = [p for edit in recipe.edits for p in edit.originals()]
    neutral = [t for edit in recipe.edits for t in edit.targets_expanded()]
    neutral += list(recipe.preserve) + [p for edit in recipe.edits for p in edit.preserve]
    neutral += neighbours(recipe)
    return attribute, list(dict.fromkeys(neutral))


def neuron_edit_for(base: LoadedBase, recipe: Recipe, layers: list[str], top_k: int) -> NeuronEdit:
    """Neuron edit of ``recipe`` on ``base`` (prompts: :func:`neuron_prompts`; Welch's t,
    global top-k; see ``neurons``)."""
    attribute, neutral = neuron_prompts(recipe)
    if len(attribute) < 2 or len(neutral) < 2:
        raise EditError(
            f"neuron editing compares two groups of prompts and needs at least 2 in each; the "
            f"recipe has {len(attribute)} attribute prompt(s) (edits' prompts) and "
            f"{len(neutral)} distinct neutral prompt(s) (targets and preserve prompts); "
            "add preserve prompts to the recipe"
        )
    pipe, family, matrices = base.pipe, base.family, recipe.edit.matrices
    edit = select_neurons(
        projection_activations(pipe, family, attribute, layers, matrices, recipe),
        projection_activations(pipe, family, neutral, layers, matrices, recipe),
        top_k,
    )
    fingerprint = base.fingerprint
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
