"""Neuron-level editing: Welch's t, global top-k, exact output overrides, scoped hooks, files."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from locopack.edit.neurons import (
    NeuronEdit,
    apply_neurons,
    override_neurons,
    select_neurons,
    welch_t,
)
from locopack.errors import EditError

CTX = 8  # text state width
K0 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
V0 = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
K1 = "mid_block.attentions.0.transformer_blocks.0.attn2.to_k"
V1 = "mid_block.attentions.0.transformer_blocks.0.attn2.to_v"
PATHS = (K0, V0, K1, V1)


class _Attn(nn.Module):
    """Cross-attention with a learned query, projections named as in diffusers."""

    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(3, dim))
        self.to_k = nn.Linear(CTX, dim, bias=False)
        self.to_v = nn.Linear(CTX, dim, bias=False)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        k, v = self.to_k(ctx), self.to_v(ctx)
        attn = torch.softmax(self.query @ k.transpose(-1, -2) / math.sqrt(k.shape[-1]), dim=-1)
        return attn @ v


def _block(dim: int) -> nn.Module:
    layer = nn.Module()
    layer.attn2 = _Attn(dim)
    transformer = nn.Module()
    transformer.transformer_blocks = nn.ModuleList([layer])
    block = nn.Module()
    block.attentions = nn.ModuleList([transformer])
    return block


class _TinyDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.down_blocks = nn.ModuleList([_block(6)])
        self.mid_block = _block(10)

    def forward(self, ctx: torch.Tensor) -> torch.Tensor:
        blocks = (self.down_blocks[0], self.mid_block)
        outs = [b.attentions[0].transformer_blocks[0].attn2(ctx).flatten(1) for b in blocks]
        return torch.cat(outs, dim=-1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _TinyDenoiser().eval()


@pytest.fixture(scope="module")
def ctx():
    return torch.randn(2, 5, CTX, generator=torch.Generator().manual_seed(1))


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def _edit() -> NeuronEdit:
    return NeuronEdit(
        {
            K0: (torch.tensor([1, 4]), torch.tensor([0.25, -3.0])),
            V1: (torch.tensor([0, 7, 9]), torch.tensor([1.5, 2.0, -0.5])),
        },
        {"concept": "van gogh"},
    )


def test_welch_t_matches_manual_float64():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(7, 5, generator=gen) * 2 + 1, torch.randn(9, 5, generator=gen)
    got = welch_t(a, b)
    assert got.dtype == torch.float64
    for j in range(5):
        xs, ys = [float(v) for v in a[:, j]], [float(v) for v in b[:, j]]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        vx = sum((v - mx) ** 2 for v in xs) / (len(xs) - 1)
        vy = sum((v - my) ** 2 for v in ys) / (len(ys) - 1)
        expected = (mx - my) / math.sqrt(vx / len(xs) + vy / len(ys))
        assert got[j].item() == pytest.approx(expected, rel=1e-12)


def test_welch_t_guards_constant_columns_and_bad_input():
    a, b = torch.ones(4, 2), torch.ones(3, 2)
    a[:, 1] = 2.0
    t = welch_t(a, b)
    assert t[0].item() == 0.0 and math.isfinite(t[1].item()) and t[1].item() > 1e6
    with pytest.raises(EditError, match="samples >= 2"):
        welch_t(torch.ones(1, 2), b)
    with pytest.raises(EditError, match="3 columns, neutral 2"):
        welch_t(torch.ones(4, 3), b)
    with pytest.raises(EditError, match="NaN or Inf"):
        welch_t(torch.full((4, 2), float("nan")), b)


def _activations():
    """Neutral N(0,1); attribute shifts K0 neurons 2 (+10), 5 (+5), V1 neurons 3 (+8), 7 (-12)."""
    gen = torch.Generator().manual_seed(3)
    neutral = {K0: torch.randn(50, 6, generator=gen), V1: torch.randn(50, 10, generator=gen)}
    attribute = {k: torch.randn(50, v.shape[1], generator=gen) for k, v in neutral.items()}
    attribute[K0][:, 2] += 10.0
    attribute[K0][:, 5] += 5.0
    attribute[V1][:, 3] += 8.0
    attribute[V1][:, 7] -= 12.0
    return attribute, neutral


@pytest.mark.parametrize(
    ("top_k", "expected"),
    [(1, {V1: [7]}), (3, {K0: [2], V1: [3, 7]}), (4, {K0: [2, 5], V1: [3, 7]})],
)
def test_global_top_k_ranks_across_modules(top_k, expected):
    attribute, neutral = _activations()
    edit = select_neurons(attribute, neutral, top_k)
    assert edit.total() == top_k
    assert {k: idx.tolist() for k, (idx, _) in edit.overrides.items()} == expected
    for path, (idx, values) in edit.overrides.items():
        torch.testing.assert_close(values, neutral[path].double().mean(0)[idx].float())
    assert edit.metadata["top_k"] == str(top_k)


def test_select_neurons_rejects_bad_requests():
    attribute, neutral = _activations()
    with pytest.raises(EditError, match="different modules"):
        select_neurons(attribute, {K0: neutral[K0]}, 1)
    with pytest.raises(EditError, match="between 0 and 16"):
        select_neurons(attribute, neutral, 17)
    with pytest.raises(EditError, match="between 0 and 16"):
        select_neurons(attribute, neutral, -1)
    with pytest.raises(EditError, match=f"{V1}: attribute activations have 9 columns, neutral 10"):
        select_neurons({**attribute, V1: attribute[V1][:, :9]}, neutral, 1)


def test_zero_neurons_leave_outputs_exactly_unchanged(model, ctx):
    base = model(ctx)
    edit = select_neurons(*_activations(), top_k=0)
    assert edit.total() == 0 and edit.overrides == {}
    with override_neurons(model, edit):
        assert torch.equal(model(ctx), base)
    assert _no_hooks(model)


def test_override_sets_exactly_the_chosen_neurons(model, ctx):
    edit = _edit()
    base = {p: model.get_submodule(p)(ctx) for p in PATHS}
    base_out = model(ctx)
    with override_neurons(model, edit):
        for path in PATHS:
            out = model.get_submodule(path)(ctx)
            idx, values = edit.overrides.get(path, (torch.zeros(0, dtype=torch.long), None))
            keep = torch.ones(out.shape[-1], dtype=torch.bool)
            keep[idx] = False
            assert torch.equal(out[..., keep], base[path][..., keep])
            if values is not None:
                assert torch.equal(out[..., idx], values.expand_as(out[..., idx]))
        assert not torch.equal(model(ctx), base_out)
    assert _no_hooks(model) and torch.equal(model(ctx), base_out)


def test_scale_blends_towards_the_value(model, ctx):
    edit = _edit()
    idx, values = edit.overrides[K0]
    proj = model.get_submodule(K0)
    base = proj(ctx)
    with override_neurons(model, edit, scale=0.5):
        out = proj(ctx)
    torch.testing.assert_close(out[..., idx], base[..., idx] + 0.5 * (values - base[..., idx]))
    keep = torch.ones(6, dtype=torch.bool)
    keep[idx] = False
    assert torch.equal(out[..., keep], base[..., keep])
    with override_neurons(model, edit, scale=0.0):
        assert torch.equal(proj(ctx), base)


def test_hooks_are_removed_after_an_exception(model, ctx):
    base = model(ctx)
    with pytest.raises(RuntimeError, match="boom"):
        with override_neurons(model, _edit()):
            assert not _no_hooks(model)
            raise RuntimeError("boom")
    assert _no_hooks(model) and torch.equal(model(ctx), base)


def test_apply_neurons_is_permanent_until_removed(model, ctx):
    base = model(ctx)
    hooks = apply_neurons(model, _edit())
    try:
        assert set(hooks.handles) == {K0, V1}
        assert not torch.equal(model(ctx), base)
        assert not torch.equal(model(ctx), base)  # still active on a second call
    finally:
        hooks.remove()
    hooks.remove()  # idempotent
    assert _no_hooks(model) and torch.equal(model(ctx), base)


def test_missing_module_or_bad_index_raise_and_install_nothing(model):
    edit = _edit()
    edit.overrides["mid_block.attentions.0.transformer_blocks.0.attn1.to_k"] = (
        torch.tensor([0]),
        torch.tensor([0.0]),
    )
    with pytest.raises(EditError, match=r"attn1\.to_k.*does not have"):
        with override_neurons(model, edit):
            pass
    assert _no_hooks(model)
    too_wide = NeuronEdit({K0: (torch.tensor([6]), torch.tensor([1.0]))})
    with pytest.raises(EditError, match=f"{K0} has 6 outputs; the edit sets neuron 6"):
        apply_neurons(model, too_wide)
    assert _no_hooks(model)


def test_neuron_edit_validates_its_tensors():
    with pytest.raises(EditError, match="1-D long indices"):
        NeuronEdit({K0: (torch.tensor([1.0]), torch.tensor([1.0]))})
    with pytest.raises(EditError, match="1-D long indices"):
        NeuronEdit({K0: (torch.tensor([1, 2]), torch.tensor([1.0]))})
    with pytest.raises(EditError, match="negative"):
        NeuronEdit({K0: (torch.tensor([-1]), torch.tensor([1.0]))})
    with pytest.raises(EditError, match="finite floating-point values"):
        NeuronEdit({K0: (torch.tensor([1]), torch.tensor([float("nan")]))})


def test_save_load_round_trip(tmp_path):
    edit = select_neurons(*_activations(), top_k=4)
    edit.metadata["concept"] = "van gogh"
    edit.save(tmp_path / "n.safetensors")
    back = NeuronEdit.load(tmp_path / "n.safetensors")
    assert back.metadata == edit.metadata and back.total() == 4
    assert back.overrides.keys() == edit.overrides.keys()
    for path, (idx, values) in edit.overrides.items():
        assert torch.equal(back.overrides[path][0], idx)
        assert torch.equal(back.overrides[path][1], values)
    NeuronEdit({}).save(tmp_path / "empty.safetensors")
    assert NeuronEdit.load(tmp_path / "empty.safetensors").total() == 0


def test_load_rejects_missing_truncated_corrupt_and_foreign_files(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(EditError, match="cannot read neuron edit"):
        NeuronEdit.load(tmp_path / "absent.safetensors")
    good = tmp_path / "good.safetensors"
    _edit().save(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 7])
    with pytest.raises(EditError, match="cannot read neuron edit"):
        NeuronEdit.load(truncated)
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(torch.randint(0, 256, (300,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(EditError, match="cannot read neuron edit"):
        NeuronEdit.load(noise)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(EditError, match="not a locopack neuron edit"):
        NeuronEdit.load(foreign)


def test_width_is_checked_at_call_time_for_modules_without_out_features():
    net = nn.Module()
    net.proj = nn.Identity()
    edit = NeuronEdit({"proj": (torch.tensor([8]), torch.tensor([1.0]))})
    with override_neurons(net, edit):
        with pytest.raises(EditError, match="proj outputs 8 features; the edit sets neuron 8"):
            net.proj(torch.zeros(2, 8))
        assert torch.equal(net.proj(torch.zeros(2, 9))[:, 8], torch.ones(2))
    assert _no_hooks(net)
