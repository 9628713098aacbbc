"""ONNX export: onnxruntime matches torch at batch 1 and 2, names, atomicity, edits carried.

Each dynamo export of a tiny twin costs 10-25 s on one thread, so every export happens once, in a
module-scoped fixture, and all but one skip the onnxscript optimizer (``optimize=False``).
"""

from __future__ import annotations

import copy
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from locopack.delta import WeightDelta  # noqa: E402
from locopack.errors import ExportError  # noqa: E402
from locopack.export import onnx as onnx_export  # noqa: E402
from locopack.export.onnx_tracing import ExpandedMask  # noqa: E402
from locopack.models import LoadedBase  # noqa: E402

NAMES = {
    "sd1": ["sample", "timestep", "encoder_hidden_states"],
    "if": ["sample", "timestep", "encoder_hidden_states"],
    "sdxl": ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"],
    "pixart": ["sample", "timestep", "encoder_hidden_states", "encoder_attention_mask"],
}
ATOL = 1e-4


@pytest.fixture(scope="module")
def exports(twin_pipes, tmp_path_factory):
    """{family: model.onnx path}.  Only the smallest twin (PixArt) runs the (default) onnxscript
    optimizer: it adds 10-30 s per export and the check in each export covers the graph either
    way."""
    done = {}

    def get(name: str):
        if name not in done:
            pipe, family = twin_pipes[name]
            out = tmp_path_factory.mktemp(f"onnx_{name}")
            done[name] = onnx_export.export_denoiser_onnx(
                LoadedBase(pipe, family), out, optimize=name == "pixart"
            )
        return done[name]

    return get


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs built from the session's own declared shapes, independent of the exporter's."""
    gen = torch.Generator().manual_seed(seed)
    feeds = {}
    for arg in session.get_inputs():
        shape = [batch if isinstance(d, str) else d for d in arg.shape]
        if arg.name == "timestep":
            value = torch.full(shape, 637.0)
        elif arg.name == "encoder_attention_mask":
            value = torch.ones(shape, dtype=torch.int64)
            value[:, shape[1] // 3 :] = 0  # padded tail, masked out
        elif arg.name == "time_ids":
            value = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).expand(shape)
        else:
            value = torch.randn(shape, generator=gen)
        feeds[arg.name] = value.contiguous().numpy()
    return feeds


def _torch_forward(name: str, denoiser, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The denoiser called directly, as its pipeline calls it."""
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        if name == "pixart":
            out = denoiser(
                hidden_states=t["sample"],
                encoder_hidden_states=t["encoder_hidden_states"],
                timestep=t["timestep"],
                encoder_attention_mask=t["encoder_attention_mask"],
                added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            )
        elif name == "sdxl":
            added = {"text_embeds": t["text_embeds"], "time_ids": t["time_ids"]}
            out = denoiser(
                t["sample"], t["timestep"], t["encoder_hidden_states"], added_cond_kwargs=added
            )
        else:
            out = denoiser(t["sample"], t["timestep"], t["encoder_hidden_states"])
    return out.sample.numpy()


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "name", ["sd1", "pixart", pytest.param("sdxl", marks=SLOW), pytest.param("if", marks=SLOW)]
)
def test_onnxruntime_matches_torch(name, twin_pipes, exports):
    pipe, family = twin_pipes[name]
    path = exports(name)
    assert path.name == "model.onnx" and path.parent.name == family.denoiser_attr
    record = json.loads((path.parent / "onnx_export.json").read_text())
    assert record["exporter"] == "dynamo" and record["opset"] == 18
    assert 0 <= record["check"]["max_abs_diff"] <= ATOL
    assert not record["external_data"] and not (path.parent / "model.onnx.data").exists()

    session = _session(path)
    assert [i.name for i in session.get_inputs()] == NAMES[name]
    assert [o.name for o in session.get_outputs()] == ["out_sample"]
    assert [i["name"] for i in record["inputs"]] == NAMES[name]
    assert all(i.shape[0] == "batch" for i in session.get_inputs())

    denoiser = getattr(pipe, family.denoiser_attr)
    for batch in (1, 2):
        feeds = _feeds(session, batch, seed=10 + batch)
        got = session.run(["out_sample"], feeds)[0]
        expected = _torch_forward(name, denoiser, feeds)
        assert got.shape == expected.shape and got.shape[0] == batch
        assert np.abs(got - expected).max() <= ATOL
    assert onnx_export.check_onnx(LoadedBase(pipe, family), path) <= ATOL


def test_pixart_mask_is_honoured_and_processors_restored(twin_pipes, exports):
    pipe, family = twin_pipes["pixart"]
    session = _session(exports("pixart"))
    feeds = _feeds(session, 2, seed=3)
    masked = session.run(["out_sample"], feeds)[0]
    feeds["encoder_attention_mask"][:] = 1
    unmasked = session.run(["out_sample"], feeds)[0]
    assert np.abs(masked - unmasked).max() > 1e-4  # the mask input really reaches attn2
    for processor in pipe.transformer.attn_processors.values():
        assert not isinstance(processor, ExpandedMask)


def test_timestep_broadcasts_like_the_onnx_sd_pipeline(exports):
    """OnnxStableDiffusionPipeline feeds one timestep of shape (1,) for a CFG batch of 2."""
    session = _session(exports("sd1"))
    feeds = _feeds(session, 2, seed=4)
    full = session.run(["out_sample"], feeds)[0]
    feeds["timestep"] = feeds["timestep"][:1]
    assert np.abs(session.run(["out_sample"], feeds)[0] - full).max() <= 1e-6


@SLOW
def test_edit_is_carried_into_the_export(twin_pipes, exports, tmp_path, monkeypatch):
    pipe, family = twin_pipes["sd1"]
    edited = copy.deepcopy(pipe)
    key = family.sites(edited.unet)[0].key
    original = pipe.unet.get_submodule(key).weight.detach().clone()
    gen = torch.Generator().manual_seed(7)
    delta = WeightDelta({key: 0.5 * torch.randn(original.shape, generator=gen)})
    delta.apply(edited.unet)
    # also exercise the external-data layout that models over ~1.8 GB get
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)
    path = onnx_export.export_denoiser_onnx(LoadedBase(edited, family), tmp_path, optimize=False)
    assert (path.parent / "model.onnx.data").is_file()
    assert json.loads((path.parent / "onnx_export.json").read_text())["external_data"]

    base_session, edited_session = _session(exports("sd1")), _session(path)
    feeds = _feeds(base_session, 2, seed=5)
    base = base_session.run(["out_sample"], feeds)[0]
    after = edited_session.run(["out_sample"], feeds)[0]
    assert np.abs(after - base).max() > 1e-3
    assert np.abs(after - _torch_forward("sd1", edited.unet, feeds)).max() <= ATOL
    assert torch.equal(pipe.unet.get_submodule(key).weight, original)  # the shared twin is intact


def test_failed_export_leaves_no_folder(twin_pipes, tmp_path, monkeypatch):
    pipe, family = twin_pipes["sd1"]
    calls = []

    def broken(*args, **kwargs):
        calls.append(kwargs.get("dynamo"))
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken)
    out = tmp_path / "onnx"
    with pytest.raises(ExportError, match="both exporters.*exporter exploded"):
        onnx_export.export_denoiser_onnx(LoadedBase(pipe, family), out)
    assert calls == [True, False]  # dynamo first, TorchScript only as the fallback
    assert not (out / "unet").exists()
    assert list(out.iterdir()) == []  # no temporary folder left behind either


def test_failed_check_leaves_no_folder(twin_pipes, tmp_path, monkeypatch):
    pipe, family = twin_pipes["sd1"]

    def mismatch(*args, **kwargs):
        raise ExportError("onnxruntime and torch differ by 1 (> 0.0001)")

    monkeypatch.setattr(onnx_export, "check_onnx", mismatch)
    monkeypatch.setattr(onnx_export, "_run_exporter", lambda spec, path, *a: path.touch() or {})
    monkeypatch.setattr(onnx_export, "_io_description", lambda path: {})
    with pytest.raises(ExportError, match="differ"):
        onnx_export.export_denoiser_onnx(LoadedBase(pipe, family), tmp_path / "onnx")
    assert not (tmp_path / "onnx" / "unet").exists()


def test_unsupported_unet_inputs_are_refused(twin_pipes, tmp_path):
    pipe, family = twin_pipes["sd1"]
    config = SimpleNamespace(**{**pipe.unet.config, "class_embed_type": "timestep"})
    fake = SimpleNamespace(unet=SimpleNamespace(config=config, dtype=torch.float32))
    fake.tokenizer = pipe.tokenizer
    with pytest.raises(ExportError, match="not supported for Stable Diffusion.*class labels"):
        onnx_export.export_denoiser_onnx(LoadedBase(fake, family), tmp_path / "onnx")
    assert not (tmp_path / "onnx" / "unet").exists()


def test_missing_extra_names_the_install_command(twin_pipes, tmp_path, monkeypatch):
    pipe, family = twin_pipes["sd1"]
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    with pytest.raises(ExportError, match=r"pip install 'locopack\[onnx\]'"):
        onnx_export.export_denoiser_onnx(LoadedBase(pipe, family), tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
