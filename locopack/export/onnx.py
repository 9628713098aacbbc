"""ONNX export of an (already edited) denoiser, in the ONNX Stable Diffusion folder layout.

The edit lives entirely in the denoiser's weights, so exporting the denoiser is enough to ship
it to ONNX runtimes: the text encoders, VAE and scheduler of the base model are unchanged and can
be exported by any tool (e.g. optimum) or reused from an existing ONNX conversion of the base.

Layout, as diffusers' ``OnnxStableDiffusionPipeline`` and optimum read it::

    <out_dir>/unet/model.onnx            UNet families (sd1, sd2, sdxl, if)
    <out_dir>/transformer/model.onnx     PixArt, SD3, FLUX (the folder is the pipeline attribute)
    <out_dir>/<same>/model.onnx.data     only when the weights pass ~1.8 GB (protobuf's 2 GB cap)
    <out_dir>/<same>/onnx_export.json    opset, exporter, inputs/outputs, measured ORT-vs-torch diff

Inputs, all with a dynamic leading ``batch`` axis; every other size is fixed at export time
(the image size and the family's prompt length L):

* UNets: ``sample`` (B, C, H, W) float (H, W: the config's ``sample_size``), ``timestep`` (B,)
  float32, ``encoder_hidden_states`` (B, L, D); SD-XL adds ``text_embeds`` (B, P) and
  ``time_ids`` (B, 6) -- the UNet's ``added_cond_kwargs``.  DeepFloyd IF stage I's
  ``encoder_hidden_states`` are the raw T5 states (the UNet's ``encoder_hid_proj`` is inside the
  graph; 6 output channels).
* PixArt: the UNet's three, plus ``encoder_attention_mask`` (B, L) int64 (1 keeps a token; the
  pipeline always passes the T5 padding mask, so it is a required input -- feed ones to attend
  everywhere), and ``resolution`` (B, 2) / ``aspect_ratio`` (B, 1) only for transformers that
  use them (``sample_size == 128``, the 1024-px models); otherwise both are ``None`` as in the
  pipeline.
* Joint attention (SD3, FLUX): ``sample``, ``timestep`` (B,) float32 in [0, 1000) (the
  scheduler's; for FLUX the graph divides it by 1000, as its pipeline does),
  ``encoder_hidden_states`` (B, L, D) and ``pooled_projections`` (B, P), the pooled CLIP
  vector.  SD3: ``sample`` is (B, C, H, W) at the config's ``sample_size``; L is CLIP's 77
  tokens then T5's.  FLUX: ``sample`` is the packed latents (B, tokens, C) at the pipeline's
  default size (2 x 2 latent pixels a token); L is T5's alone; ``guidance`` (B,) float32 is
  added for guidance-distilled transformers (``guidance_embeds``: FLUX.1-dev, not schnell);
  the text and image position ids depend on the sizes only and are constants of the graph.

The output is ``out_sample``.  ``timestep`` may also be fed with shape (1,) for any batch, as
``OnnxStableDiffusionPipeline`` does.  UNets that need other inputs (class labels, image
embeddings) and transformers other than PixArt, SD3 and FLUX raise :class:`ExportError`.

Choices worth knowing:

* The dynamo exporter (``torch.onnx.export(dynamo=True)``) is used; the TorchScript exporter is
  tried only when it raises, and which one ran is recorded (with dynamo's error).  The check is
  the only guard against a bad fallback graph (the TorchScript export of PixArt loads in no
  runtime), so ``check=False`` is for when onnxruntime is not at hand.
* What is traced -- the adapters that flatten each family's call into the inputs above, and the
  seeded inputs used by both export and check -- and the tracing workarounds live in
  :mod:`locopack.export.onnx_tracing`, whose docstring says why each exists: the batch axis is
  named rather than a strict ``Dim``, PixArt's cross-attention mask is pre-expanded per head, and
  ``squeeze`` of a non-1 axis becomes Identity.  All are scoped to the export, and each export is
  checked against the untouched torch model.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypedDict

import torch

from ..errors import ExportError
from ..storage import atomic_dir, atomic_write_text
from .onnx_tracing import (
    TraceSpec,
    batch_axes,
    dummy_inputs,
    trace_spec,
    tracing,
    translations,
)

if TYPE_CHECKING:
    from ..models.loaded import LoadedBase

FORMAT = "locopack.onnx_export/1"
EXTERNAL_DATA_BYTES = 1_800_000_000
OUTPUT_NAME = "out_sample"
_INSTALL_HINT = "pip install 'locopack[onnx]'"


def _require(module: str) -> ModuleType:
    try:
        return __import__(module)
    except ImportError:
        raise ExportError(f"ONNX export needs the '{module}' package: {_INSTALL_HINT}") from None


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode for the block; every submodule's own training flag is restored after."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


# ---- export ----------------------------------------------------------------------------------
def _error_summary(err: BaseException) -> str:
    """One short line for the record: torch.onnx errors carry pages of advice and colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    if "## Exception summary" in text:
        text = text.split("## Exception summary", 1)[1]
        text = text.split("(Refer to the full stack trace", 1)[0]
    return f"{type(err).__name__}: {' '.join(text.split())}"[:1000]


def _run_exporter(spec: TraceSpec, path: Path, opset: int, optimize: bool) -> dict[str, object]:
    """Export with dynamo; fall back to TorchScript only if dynamo raises."""
    args = tuple(dummy_inputs(spec, 2, seed=0).values())
    names = list(spec.inputs)
    n_bytes = sum(t.numel() * t.element_size() for t in spec.adapter.state_dict().values())
    external = n_bytes > EXTERNAL_DATA_BYTES
    common = {"input_names": names, "output_names": [OUTPUT_NAME], "opset_version": opset}
    record: dict[str, object] = {"external_data": external, "parameter_bytes": n_bytes}
    with tracing(spec):
        try:
            torch.onnx.export(
                spec.adapter,
                args,
                str(path),
                dynamo=True,
                external_data=external,
                dynamic_shapes=batch_axes(names),
                optimize=optimize,
                custom_translation_table=translations(),
                verbose=False,
                **common,
            )
            record["exporter"] = "dynamo"
        except Exception as err:  # any dynamo failure means: try TorchScript
            record["dynamo_error"] = _error_summary(err)
            for leftover in path.parent.iterdir():
                leftover.unlink()
            try:
                torch.onnx.export(
                    spec.adapter,
                    args,
                    str(path),
                    dynamo=False,
                    dynamic_axes=batch_axes([*names, OUTPUT_NAME]),
                    **common,
                )
            except Exception as err2:
                raise ExportError(
                    f"ONNX export failed with both exporters; dynamo: {record['dynamo_error']}; "
                    f"torchscript: {_error_summary(err2)}"
                ) from err2
            record["exporter"] = "torchscript"
    return record


class TensorIO(TypedDict):
    """One input or output of an exported graph: symbolic axes are strings."""

    name: str
    shape: list[int | str]
    dtype: str


def _io_description(path: Path) -> dict[str, list[TensorIO]]:
    """Names, shapes (symbolic axes as strings) and element types read back from the file."""
    onnx = _require("onnx")
    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values) -> list[TensorIO]:
        rows: list[TensorIO] = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
            rows.append({"name": value.name, "shape": dims, "dtype": dtype})
        return rows

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}


def export_denoiser_onnx(
    base: LoadedBase,
    out_dir: str | Path,
    *,
    opset: int = 18,
    check: bool = True,
    optimize: bool = True,
    metadata: dict[str, object] | None = None,
) -> Path:
    """Export ``base``'s denoiser, as it is now (edits included), to ONNX.

    Args:
        base: a loaded base whose denoiser carries the edit.
        out_dir: the ONNX model folder; ``<denoiser>/`` inside it is replaced atomically.
        opset: ONNX opset version.
        check: compare onnxruntime with torch at batch 1 and 2 (see :func:`check_onnx`) before
            the folder is put in place.
        optimize: run the onnxscript graph optimizer after the dynamo export (slower export,
            smaller graph).
        metadata: JSON-ready provenance (e.g. the delta's hash) stored in ``onnx_export.json``.

    Returns:
        The path of ``model.onnx``.

    Raises:
        ExportError: the ONNX packages are missing, the family's denoiser has inputs this
            exporter does not handle, both exporters failed, or the check failed.  Nothing is
            left at ``<out_dir>/<denoiser>`` then.
    """
    _require("onnx")
    _require("onnxscript")
    family = base.family
    spec = trace_spec(base)
    target = Path(out_dir) / family.denoiser_attr
    with atomic_dir(target) as tmp, _eval_mode(spec.adapter):
        record = _run_exporter(spec, tmp / "model.onnx", opset, optimize)
        record = {
            "format": FORMAT,
            "family": family.name,
            "denoiser": family.denoiser_attr,
            "opset": opset,
            **record,
            **_io_description(tmp / "model.onnx"),
        }
        if check:
            try:
                diff = check_onnx(base, tmp / "model.onnx")
            except ExportError as err:
                if "dynamo_error" not in record:
                    raise
                raise ExportError(
                    f"{err}; (TorchScript fallback, dynamo had failed: {record['dynamo_error']})"
                ) from None
            record["check"] = {
                "batch_sizes": [1, 2],
                "provider": "CPUExecutionProvider",
                "max_abs_diff": diff,
            }
        record["versions"] = _versions()
        record["locopack"] = metadata or {}
        atomic_write_text(tmp / "onnx_export.json", json.dumps(record, indent=2) + "\n")
    return target / "model.onnx"


def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    for name in ("onnx", "onnxscript", "onnxruntime"):
        versions[name] = getattr(_require(name), "__version__", "?")
    return versions


# ---- check ------------------------------------------------------------------------------------
def check_onnx(
    base: LoadedBase,
    onnx_path: str | Path,
    batch_sizes: tuple[int, ...] = (1, 2),
    seed: int = 0,
    *,
    atol: float = 1e-4,
) -> float:
    """Max abs difference between onnxruntime (CPU) and ``base``'s torch denoiser on seeded
    inputs.

    Raises:
        ExportError: onnxruntime is missing, cannot run the model, or the difference is above
            ``atol`` (or not finite).
    """
    ort = _require("onnxruntime")
    spec = trace_spec(base)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ExportError(f"{onnx_path}: onnxruntime cannot load the model: {err}") from None
    worst = 0.0
    for i, batch in enumerate(batch_sizes):
        inputs = dummy_inputs(spec, batch, seed + i)
        with torch.no_grad(), _eval_mode(spec.adapter):
            expected = spec.adapter(*inputs.values()).float().cpu()
        feed = {name: t.cpu().numpy() for name, t in inputs.items()}
        got = torch.from_numpy(session.run([OUTPUT_NAME], feed)[0]).float()
        if got.shape != expected.shape:
            raise ExportError(
                f"{onnx_path}: output shape {tuple(got.shape)} at batch {batch}, "
                f"torch gives {tuple(expected.shape)}"
            )
        diff = (got - expected).abs().max().item()
        worst = max(worst, diff) if math.isfinite(diff) else math.inf
    if worst > atol:
        raise ExportError(
            f"{onnx_path}: onnxruntime and torch differ by {worst:.3g} (> {atol:g}) at batch "
            f"sizes {list(batch_sizes)}; the export is not faithful, do not ship it"
        )
    return worst
