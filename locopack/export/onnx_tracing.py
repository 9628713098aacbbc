"""What the ONNX graph of a denoiser takes, and the workarounds that make the denoiser traceable.

:mod:`locopack.export.onnx` exports and checks; this module decides what is traced and keeps the
tracer from tripping over diffusers' code.  Every workaround is scoped to the export (a context
manager or a translation table handed to ``torch.onnx.export``), so the model the caller holds is
left as it was, and each export is checked against the untouched torch model afterwards.

* **Adapters** (:class:`_UNetAdapter`, :class:`_PixArtAdapter`, :class:`_JointAdapter`).  An
  ONNX graph takes a flat list of tensors; the denoisers take keyword arguments, nested dicts
  (``added_cond_kwargs``) and return a ``ModelOutput``.  The adapters give each family one
  positional signature, in the order of :attr:`TraceSpec.inputs`, and return the bare sample
  tensor.
* **Inputs** (:func:`_spec`, :func:`dummy_inputs`).  Shapes come from the denoiser's config and
  the family's prompt length; families whose inputs ONNX cannot carry (class labels, image
  embeddings, transformers other than PixArt, SD3 and FLUX) are refused here, before any
  tracing.  The dummy inputs are seeded and *plausible* (timesteps in [0, 1000), a padding mask
  that keeps at least one token, positive sizes for ``time_ids``/``resolution``) because the
  same inputs feed the check, which should run the model on values like the pipeline's.
* **Dynamic batch by name** (:func:`batch_axes`, :func:`tracing`).  The batch axis is given to
  torch.onnx as the string ``"batch"``, which it turns into ``torch.export.Dim.DYNAMIC`` and names
  ``batch`` in the graph.  A strict ``Dim("batch")`` fails on the SD UNets: diffusers'
  ``Upsample2D`` branches on ``batch >= 64`` (a ``.contiguous()`` that changes nothing), which
  torch.export reports as a constraint violation; the exported graph runs any batch size.  Since
  every input shares that one axis, torch.onnx warns once per extra input that the name "will not
  be used"; :func:`tracing` silences exactly that warning.
* **PixArt's attention mask** (:class:`ExpandedMask`, :func:`_traceable_masks`).  diffusers
  repeats the (B, 1, L) cross-attention mask per head with ``repeat_interleave``, whose output
  size torch.export cannot relate to the batch symbol, so the export fails.  The processors are
  wrapped, for the export only, to pre-expand the mask with ``expand`` + ``reshape``.
* **Squeeze of a non-1 axis** (:func:`translations`).  onnxscript 0.7 lowers ``aten.squeeze.dim``
  to ONNX ``Squeeze`` even where the axis is statically not 1; torch treats that as a no-op, ONNX
  rejects the model at load.  PixArt's final ``hidden_states.squeeze(1)`` hits it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..errors import ExportError

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily
    from ..models.loaded import LoadedBase

BATCH_AXIS = "batch"


# ---- what the ONNX graph takes ------------------------------------------------------------------
@dataclass
class TraceSpec:
    """The adapter module, its inputs (name -> shape without batch, dtype) and whether its
    cross-attention masks must be pre-expanded for tracing (see :func:`_traceable_masks`)."""

    adapter: torch.nn.Module
    inputs: dict[str, tuple[tuple[int, ...], torch.dtype]] = field(default_factory=dict)
    masked: bool = False
    device: torch.device = torch.device("cpu")


class _UNetAdapter(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module, text_time: bool) -> None:
        super().__init__()
        self.unet, self.text_time = unet, text_time

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds=None, time_ids=None):
        added = {"text_embeds": text_embeds, "time_ids": time_ids} if self.text_time else None
        return self.unet(
            sample, timestep, encoder_hidden_states, added_cond_kwargs=added, return_dict=False
        )[0]


class _PixArtAdapter(torch.nn.Module):
    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self,
        sample,
        timestep,
        encoder_hidden_states,
        encoder_attention_mask,
        resolution=None,
        aspect_ratio=None,
    ):
        return self.transformer(
            hidden_states=sample,
            encoder_hidden_states=encoder_hidden_states,
            timestep=timestep,
            added_cond_kwargs={"resolution": resolution, "aspect_ratio": aspect_ratio},
            encoder_attention_mask=encoder_attention_mask,
            return_dict=False,
        )[0]


class _JointAdapter(torch.nn.Module):
    """SD3 / FLUX transformers as ``(sample, timestep, encoder_hidden_states,
    pooled_projections[, guidance])``.

    ``timestep`` is the scheduler's, in [0, 1000), for both (FLUX's pipeline passes it
    divided by 1000).  FLUX takes packed latents (B, tokens, channels) and position ids for the
    text and image tokens; those ids depend only on the sizes, which the graph fixes, so they
    are constants of the adapter, as the pipeline computes them.
    """

    def __init__(self, transformer: torch.nn.Module, ids: tuple[torch.Tensor, ...] = ()) -> None:
        super().__init__()
        self.transformer = transformer
        if ids:
            self.register_buffer("txt_ids", ids[0], persistent=False)
            self.register_buffer("img_ids", ids[1], persistent=False)

    def forward(self, sample, timestep, encoder_hidden_states, pooled_projections, guidance=None):
        if not hasattr(self, "img_ids"):
            return self.transformer(
                hidden_states=sample,
                timestep=timestep,
                encoder_hidden_states=encoder_hidden_states,
                pooled_projections=pooled_projections,
                return_dict=False,
            )[0]
        return self.transformer(
            hidden_states=sample,
            timestep=timestep / 1000,
            guidance=guidance,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled_projections,
            txt_ids=self.txt_ids,
            img_ids=self.img_ids,
            return_dict=False,
        )[0]


def _joint_spec(
    pipe: DiffusionPipeline, family: type[ModelFamily], denoiser: torch.nn.Module
) -> TraceSpec:
    """The inputs of an SD3 or FLUX transformer at its pipeline's default size."""
    cfg, dtype, length = denoiser.config, denoiser.dtype, family.max_length(pipe)
    pooled = ((cfg.pooled_projection_dim,), dtype)
    text = ((length, cfg.joint_attention_dim), dtype)
    if type(denoiser).__name__ == "SD3Transformer2DModel":
        spec = TraceSpec(_JointAdapter(denoiser), device=denoiser.device)
        size = cfg.sample_size
        spec.inputs["sample"] = ((cfg.in_channels, size, size), dtype)
    else:
        side = pipe.default_sample_size // 2  # latent pixels per side, 2 x 2 to a token
        ids = (
            torch.zeros(length, 3, device=denoiser.device, dtype=dtype),
            pipe._prepare_latent_image_ids(1, side, side, denoiser.device, dtype),
        )
        spec = TraceSpec(_JointAdapter(denoiser, ids), device=denoiser.device)
        spec.inputs["sample"] = ((side * side, cfg.in_channels), dtype)
    spec.inputs["timestep"] = ((), torch.float32)
    spec.inputs["encoder_hidden_states"] = text
    spec.inputs["pooled_projections"] = pooled
    if getattr(cfg, "guidance_embeds", False):
        spec.inputs["guidance"] = ((), torch.float32)
    return spec


#: the joint-attention transformers whose inputs :func:`_joint_spec` states
_JOINT_TRACED = ("SD3Transformer2DModel", "FluxTransformer2DModel")
#: the other transformers whose inputs :func:`trace_spec` states
_TRACED = ("PixArtTransformer2DModel",)


def _unsupported(family: type[ModelFamily], why: str) -> ExportError:
    return ExportError(f"ONNX export is not supported for {family.pretty_name} models: {why}")


def trace_spec(base: LoadedBase) -> TraceSpec:
    """The adapter and the inputs that trace ``base``'s denoiser.

    Raises:
        ExportError: a denoiser whose inputs no ONNX export carries.
    """
    pipe, family, denoiser = base.pipe, base.family, base.denoiser
    if family.onnx_refusal:
        raise _unsupported(family, family.onnx_refusal)
    if type(denoiser).__name__ in _JOINT_TRACED:
        return _joint_spec(pipe, family, denoiser)
    if family.denoiser_attr == "transformer" and type(denoiser).__name__ not in _TRACED:
        raise _unsupported(family, f"no ONNX inputs defined for {type(denoiser).__name__}")
    cfg, dtype = denoiser.config, denoiser.dtype
    size, length = cfg.sample_size, family.max_length(pipe)
    if isinstance(size, (list, tuple)):
        height, width = size
    else:
        height = width = size
    if family.denoiser_attr == "transformer":
        spec = TraceSpec(_PixArtAdapter(denoiser), masked=True, device=denoiser.device)
        spec.inputs["sample"] = ((cfg.in_channels, height, width), dtype)
        spec.inputs["timestep"] = ((), torch.float32)
        spec.inputs["encoder_hidden_states"] = ((length, cfg.caption_channels), dtype)
        spec.inputs["encoder_attention_mask"] = ((length,), torch.int64)
        if denoiser.use_additional_conditions:
            spec.inputs["resolution"] = ((2,), dtype)
            spec.inputs["aspect_ratio"] = ((1,), dtype)
        return spec
    if cfg.class_embed_type is not None or cfg.num_class_embeds is not None:
        raise _unsupported(family, "the UNet needs class labels, which the ONNX inputs lack")
    extra = cfg.addition_embed_type
    if extra not in (None, "text", "text_time"):
        raise _unsupported(family, f"the UNet's addition_embed_type {extra!r} needs image inputs")
    if cfg.encoder_hid_dim_type not in (None, "text_proj"):
        raise _unsupported(family, f"encoder_hid_dim_type {cfg.encoder_hid_dim_type!r}")
    spec = TraceSpec(_UNetAdapter(denoiser, text_time=extra == "text_time"), device=denoiser.device)
    spec.inputs["sample"] = ((cfg.in_channels, height, width), dtype)
    spec.inputs["timestep"] = ((), torch.float32)
    text_dim = cfg.encoder_hid_dim or cfg.cross_attention_dim
    spec.inputs["encoder_hidden_states"] = ((length, text_dim), dtype)
    if extra == "text_time":
        encoder_2 = getattr(pipe, "text_encoder_2", None)
        pooled = encoder_2.config.projection_dim if encoder_2 is not None else None
        total, step = cfg.projection_class_embeddings_input_dim, cfg.addition_time_embed_dim
        pooled = pooled if pooled is not None else total - 6 * step
        spec.inputs["text_embeds"] = ((pooled,), dtype)
        spec.inputs["time_ids"] = (((total - pooled) // step,), dtype)
    return spec


def dummy_inputs(spec: TraceSpec, batch: int, seed: int) -> dict[str, torch.Tensor]:
    """Seeded inputs of the right shapes and plausible values for each input name."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, (shape, dtype) in spec.inputs.items():
        if name == "timestep":
            value = torch.randint(0, 1000, (batch,), generator=gen).to(dtype)
        elif name == "encoder_attention_mask":
            keep = torch.randint(1, shape[0] + 1, (batch, 1), generator=gen)
            value = (torch.arange(shape[0]).expand(batch, -1) < keep).to(dtype)
        elif name == "guidance":
            value = torch.rand((batch,), generator=gen).to(dtype) * 4 + 1
        elif name in ("time_ids", "resolution"):
            value = torch.randint(1, 128, (batch, *shape), generator=gen).to(dtype) * 8
        elif name == "aspect_ratio":
            value = torch.rand((batch, *shape), generator=gen).to(dtype) + 0.5
        else:
            value = torch.randn((batch, *shape), generator=gen).to(dtype)
        out[name] = value.to(spec.device)
    return out


# ---- tracing workarounds ------------------------------------------------------------------------
def batch_axes(names: Iterable[str]) -> dict[str, dict[int, str]]:
    """``{name: {0: "batch"}}`` for each name: the leading axis is dynamic and named by string,
    not ``Dim("batch")`` (see the module docstring)."""
    return {name: {0: BATCH_AXIS} for name in names}


class ExpandedMask:
    """Wraps an attention processor: expands a (B, 1, L) mask to (B * heads, 1, L) itself.

    diffusers' ``Attention.prepare_attention_mask`` does this with ``repeat_interleave``, whose
    traced output size torch.export cannot relate to the batch symbol (the export then fails
    with "size of tensor a (64) must match ... (s78//s53)").  ``expand`` + ``reshape`` give the
    same rows (row ``b * heads + h`` is ``mask[b]``) in a form it can, and the processor then
    finds the mask already at full size and skips its own repeat.  The reshape to the hidden
    states' batch tells the tracer that the mask and the sample share one batch axis.
    """

    def __init__(self, inner: Callable[..., torch.Tensor]) -> None:
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kw):
        if attention_mask is not None and attention_mask.ndim == 3:
            _, rows, length = attention_mask.shape
            batch = hidden_states.shape[0]  # ties the mask's batch axis to the sample's
            attention_mask = (
                attention_mask.reshape(batch, rows, length)
                .unsqueeze(1)
                .expand(batch, attn.heads, rows, length)
                .reshape(batch * attn.heads, rows, length)
            )
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, **kw)


@contextlib.contextmanager
def _traceable_masks(denoiser: torch.nn.Module, active: bool) -> Iterator[None]:
    """Scoped swap of every attention processor for :class:`ExpandedMask`; restored after."""
    saved = {}
    try:
        if active:
            for module in denoiser.modules():
                if hasattr(module, "processor") and hasattr(module, "prepare_attention_mask"):
                    saved[module] = module.processor
                    module.processor = ExpandedMask(module.processor)
        yield
    finally:
        for module, processor in saved.items():
            module.processor = processor


@contextlib.contextmanager
def tracing(spec: TraceSpec) -> Iterator[None]:
    """The scoped workarounds around one export: pre-expanded masks when ``spec.masked``, and
    the per-input warning about the shared batch-axis name silenced."""
    with _traceable_masks(spec.adapter, spec.masked), warnings.catch_warnings():
        # every input shares the batch axis; torch.onnx warns once per extra input about that
        warnings.filterwarnings("ignore", message=rf".*axis name: {BATCH_AXIS} will not be used")
        yield


def translations() -> dict[torch._ops.OpOverload, Callable[..., object]]:
    """Fixes to the dynamo exporter's aten-to-ONNX table (onnxscript 0.7).

    ``aten.squeeze.dim`` becomes ONNX ``Squeeze`` even where the axis is statically not 1; torch
    treats that as a no-op, ONNX rejects the model at load ("Dimension of input 1 must be 1").
    PixArt's final ``hidden_states.squeeze(1)`` on (B, tokens, C) hits it.
    """
    from onnxscript import opset18 as op
    from onnxscript.function_libs.torch_lib.tensor_typing import TTensor

    def squeeze_dim(self: TTensor, dim: int) -> TTensor:
        shape = self.shape
        static = shape is not None and (len(shape) == 0 or isinstance(shape[dim], int))
        if static and (len(shape) == 0 or shape[dim] != 1):
            return op.Identity(self)
        return op.Squeeze(self, [dim])

    return {torch.ops.aten.squeeze.dim: squeeze_dim}
