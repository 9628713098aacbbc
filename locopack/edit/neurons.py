"""Neuron-level editing: override the few key/value neurons that carry an attribute.

On the sites LocoGen localized, the output neurons of the cross-attention key and value
projections are ranked by Welch's t statistic between their activations on prompts with the
attribute (e.g. "... in the style of Van Gogh") and on neutral prompts; at inference the top-k are
overwritten with their mean over the neutral prompts (the neuron-level editing of Basu et al.,
ICML 2024).

What the override can and cannot do (``scripts/bench_neurons.py`` measures it): a key neuron
set to one constant at every text position drops out of the differences between the positions'
attention logits, whichever constant it is, so it only flattens attention; a value neuron's
constant replaces what that channel carries from every token.  So the override removes an
attribute only where a minority of the channels carries it.  On the toy world's stripes style it
does not: 90% of the change from the target prompts to the edit's prompts spreads over 260 of
the window's 448 value neurons, and overriding 200 of them (globally ranked, neutral mean)
leaves stripes in every image; all 448 leave 8%, at a cost to color (-15 points) and to
unlisted prompts (-33); at all 7 sites, 200 of 704 still leave every stripe.  On the deep toy
world's dots style (16 sites) it does: 200 of the 1056 value neurons of all sites leave dots
in 6% of the images, the other attributes kept (unlisted prompts 91% vs 93% before), where
LocoGen's 3-site window, by neurons (54% at 100 of 160) or by LocoEdit (58%), does not.
The neutral mean beats zero (33% at all 448) and one global ranking beats an even split per
site (same efficacy, more damage), so those stay the defaults.

Stable Diffusion's cross-attention key/value projections have no bias, so a constant output cannot
be written into the weights as it stands.  It could be, as a zeroed row of ``W`` plus a bias equal
to the value, but that adds parameters the export formats do not expect; we represent the edit as
a forward hook on the projection instead (:func:`override_neurons`, :func:`apply_neurons`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from ..errors import EditError

__all__ = [
    "NeuronEdit",
    "NeuronHooks",
    "apply_neurons",
    "override_neurons",
    "select_neurons",
    "welch_t",
]

_FORMAT_KEY, _FORMAT = "locopack_format", "neuron_edit/1"


def welch_t(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Welch's t statistic per column: ``(mean_a - mean_b) / sqrt(var_a/n_a + var_b/n_b)``.

    Variances are unbiased (divide by n - 1); the standard error is clamped below at ``eps``
    (default 1e-12) so constant columns give a large finite t, or 0 if the means agree.  Neurons
    are ranked by ``|t|``: a large shift in either direction marks a neuron that carries the
    attribute.

    Args:
        a: (n_a, d) activations on attribute prompts, n_a >= 2.
        b: (n_b, d) activations on neutral prompts, n_b >= 2.

    Returns:
        (d,) float64 t statistics.

    Raises:
        EditError: on non-2-D input, fewer than 2 samples, differing widths or NaN/Inf.
    """
    for name, t in (("attribute", a), ("neutral", b)):
        if t.dim() != 2 or t.shape[0] < 2:
            raise EditError(f"{name} activations must be (samples >= 2, d), got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise EditError(f"{name} activations contain NaN or Inf values")
    if a.shape[1] != b.shape[1]:
        raise EditError(f"attribute activations have {a.shape[1]} columns, neutral {b.shape[1]}")
    a, b = a.detach().double(), b.detach().double()
    se2 = a.var(dim=0, correction=1) / a.shape[0] + b.var(dim=0, correction=1) / b.shape[0]
    return (a.mean(dim=0) - b.mean(dim=0)) / se2.sqrt().clamp_min(eps)


@dataclass
class NeuronEdit:
    """Which output neurons of which projection to override, and with what value.

    Attributes:
        overrides: {module path: (indices (k,) long, values (k,) float)}.
        metadata: free-form strings saved in the safetensors header.
    """

    overrides: dict[str, tuple[Tensor, Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for path, (idx, val) in self.overrides.items():
            if idx.dim() != 1 or idx.dtype != torch.long or val.shape != idx.shape:
                raise EditError(
                    f"override of {path!r} needs 1-D long indices and as many values; "
                    f"got indices {tuple(idx.shape)} {idx.dtype}, values {tuple(val.shape)}"
                )
            if idx.numel() and int(idx.min()) < 0:
                raise EditError(f"override of {path!r} has a negative neuron index")
            if not val.is_floating_point() or not bool(torch.isfinite(val).all()):
                raise EditError(f"override of {path!r} needs finite floating-point values")

    def total(self) -> int:
        """Number of overridden neurons over all modules."""
        return sum(idx.numel() for idx, _ in self.overrides.values())

    def save(self, path: str | Path) -> None:
        """Write ``<module>.indices`` / ``<module>.values`` tensors and the metadata, atomically."""
        from ..storage import save_tensors

        tensors = {}
        for mod, (idx, val) in self.overrides.items():
            tensors[f"{mod}.indices"] = idx.detach().cpu()
            tensors[f"{mod}.values"] = val.detach().cpu()
        save_tensors(tensors, path, {**self.metadata, _FORMAT_KEY: _FORMAT})

    @classmethod
    def load(cls, path: str | Path) -> NeuronEdit:
        """Read a file written by :meth:`save`.

        Raises:
            EditError: if the file is missing, truncated, corrupt or not a neuron edit.
        """
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # safetensors raises its own error types, OSError, ...
            raise EditError(f"cannot read neuron edit {path}: {err}") from err
        if meta.pop(_FORMAT_KEY, None) != _FORMAT:
            raise EditError(f"{path} is a safetensors file but not a locopack neuron edit")
        overrides: dict[str, tuple[Tensor, Tensor]] = {}
        for key in tensors:
            mod, _, kind = key.rpartition(".")
            if kind not in ("indices", "values") or f"{mod}.indices" not in tensors:
                raise EditError(f"{path}: unexpected or unpaired tensor {key!r}")
            if f"{mod}.values" not in tensors:
                raise EditError(f"{path}: {mod!r} has indices but no values")
            overrides[mod] = (tensors[f"{mod}.indices"], tensors[f"{mod}.values"])
        return cls(overrides, meta)


def select_neurons(
    attribute: dict[str, Tensor], neutral: dict[str, Tensor], top_k: int
) -> NeuronEdit:
    """Pick the ``top_k`` neurons with the largest ``|t|`` and set each to its neutral mean.

    ``top_k`` is global: all neurons of all given modules are ranked together, so a module whose
    neurons separate the prompts better receives more of the budget (some may receive none).
    Ties are broken by module path order, then neuron index.

    Args:
        attribute: {projection module path: (samples, out_features) activations}.
        neutral: the same modules' activations on neutral prompts.
        top_k: how many neurons to override in total, 0 <= top_k <= all neurons.

    Raises:
        EditError: if the module sets differ, shapes disagree, or top_k is out of range.
    """
    if set(attribute) != set(neutral):
        diff = sorted(set(attribute) ^ set(neutral))
        raise EditError(f"attribute and neutral activations cover different modules: {diff}")
    paths = sorted(attribute)
    stats = []
    for path in paths:
        try:
            stats.append(welch_t(attribute[path], neutral[path]).abs())
        except EditError as err:
            raise EditError(f"{path}: {err}") from err
    total = sum(s.numel() for s in stats)
    if not 0 <= top_k <= total:
        raise EditError(f"top_k must be between 0 and {total} (all neurons), got {top_k}")
    order = torch.sort(torch.cat(stats) if stats else torch.zeros(0), descending=True, stable=True)
    chosen = order.indices[:top_k]
    overrides, start = {}, 0
    for path, s in zip(paths, stats, strict=True):
        mine = chosen[(chosen >= start) & (chosen < start + s.numel())] - start
        start += s.numel()
        if mine.numel():
            idx = torch.sort(mine).values
            mean = neutral[path].detach().double().mean(dim=0)[idx]
            dtype = neutral[path].dtype if neutral[path].is_floating_point() else torch.float32
            overrides[path] = (idx.long(), mean.to(dtype))
    meta = {"method": "welch_t", "top_k": str(top_k), "modules": ",".join(paths)}
    return NeuronEdit(overrides, meta)


@dataclass
class NeuronHooks:
    """Forward hooks installed by :func:`apply_neurons`; call :meth:`remove` to undo them."""

    handles: dict[str, RemovableHandle]

    def remove(self) -> None:
        """Remove every hook (safe to call twice)."""
        for handle in self.handles.values():
            handle.remove()
        self.handles.clear()


def _make_hook(path: str, idx: Tensor, val: Tensor, scale: float):
    top = int(idx.max())

    def hook(module: torch.nn.Module, args: tuple, output: Tensor) -> Tensor:
        if output.shape[-1] <= top:
            raise EditError(
                f"{path} outputs {output.shape[-1]} features; the edit sets neuron {top}"
            )
        i, v = idx.to(output.device), val.to(device=output.device, dtype=output.dtype)
        out = output.clone()
        if scale == 1.0:  # exact: out + 1 * (v - out) need not round back to v
            out[..., i] = v
        else:
            sel = out[..., i]
            out[..., i] = sel + scale * (v - sel)
        return out

    return hook


def apply_neurons(denoiser: torch.nn.Module, edit: NeuronEdit, scale: float = 1.0) -> NeuronHooks:
    """Install the overrides as forward hooks until ``.remove()`` is called on the result.

    ``scale`` blends: each chosen output becomes ``out + scale * (value - out)`` (1 = replace).
    Every module is resolved and checked before any hook is installed.

    Raises:
        EditError: if a module path is not in ``denoiser``, or an index exceeds its out_features.
    """
    if not math.isfinite(float(scale)):
        raise EditError(f"scale must be finite, got {scale!r}")
    plan = []
    for path, (idx, val) in edit.overrides.items():
        if idx.numel() == 0:
            continue
        try:
            module = denoiser.get_submodule(path)
        except AttributeError as err:
            raise EditError(
                f"neuron edit names {path!r}, which the denoiser does not have"
            ) from err
        width = getattr(module, "out_features", None)
        if width is not None and int(idx.max()) >= width:
            raise EditError(f"{path} has {width} outputs; the edit sets neuron {int(idx.max())}")
        plan.append((path, module, _make_hook(path, idx, val, float(scale))))
    return NeuronHooks({p: m.register_forward_hook(h) for p, m, h in plan})


@contextlib.contextmanager
def override_neurons(
    denoiser: torch.nn.Module, edit: NeuronEdit, scale: float = 1.0
) -> Iterator[NeuronHooks]:
    """Scoped :func:`apply_neurons`: the hooks are removed on exit, also when an error escapes."""
    hooks = apply_neurons(denoiser, edit, scale)
    try:
        yield hooks
    finally:
        hooks.remove()
