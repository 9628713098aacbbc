"""ONNX export of the joint-attention transformers (SD3, FLUX): onnxruntime matches the
transformer called as its pipeline calls it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locopack.export.onnx import export_denoiser_onnx
from locopack.export.onnx_tracing import dummy_inputs, trace_spec
from locopack.models import LoadedBase, get_family

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow


def _as_the_pipeline_calls_it(pipe, inputs: dict[str, torch.Tensor]) -> np.ndarray:
    transformer = pipe.transformer
    text = inputs["encoder_hidden_states"]
    extra = {}
    if type(transformer).__name__ == "FluxTransformer2DModel":
        side = int(inputs["sample"].shape[1] ** 0.5)
        extra = {
            "txt_ids": torch.zeros(text.shape[1], 3),
            "img_ids": pipe._prepare_latent_image_ids(1, side, side, "cpu", torch.float32),
        }
        inputs = {**inputs, "timestep": inputs["timestep"] / 1000}  # FluxPipeline divides
    with torch.no_grad():
        out = transformer(
            hidden_states=inputs["sample"],
            timestep=inputs["timestep"],
            encoder_hidden_states=text,
            pooled_projections=inputs["pooled_projections"],
            return_dict=False,
            **extra,
        )[0]
    return out.numpy()


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_onnxruntime_matches_the_transformer(name, tmp_path):
    family = get_family(name)
    pipe = family.build_twin(seed=0)
    path = export_denoiser_onnx(
        LoadedBase(pipe, family), tmp_path, optimize=False
    )  # checks <= 1e-4 too
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [
        "sample",
        "timestep",
        "encoder_hidden_states",
        "pooled_projections",
    ]
    for batch in (1, 3):
        inputs = dummy_inputs(trace_spec(LoadedBase(pipe, family)), batch, seed=batch)
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        expected = _as_the_pipeline_calls_it(pipe, inputs)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4
