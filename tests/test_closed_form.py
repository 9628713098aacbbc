"""LocoEdit's closed form: optimality, agreement with the textbook formula, and failure modes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from locopack.edit.closed_form import EditSystem, normal_equation_residual, solve_delta
from locopack.errors import EditError

F64 = torch.float64


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=F64)


@pytest.fixture
def data():
    """W (40 x 32), X, Y (32 x 6), P (32 x 10): n + p <= in, so edit and preservation fit."""
    gen = torch.Generator().manual_seed(0)
    return _rand(gen, 40, 32), _rand(gen, 32, 6), _rand(gen, 32, 6), _rand(gen, 32, 10)


def _direct(w, x, y, lam, p=None, pw=1.0):
    """Independent W' = (lam W + W Y X^T + w W P P^T)(lam I + X X^T + w P P^T)^{-1} via solve."""
    a = lam * torch.eye(x.shape[0], dtype=F64) + x @ x.T
    b = lam * w + w @ y @ x.T
    if p is not None:
        a, b = a + pw * p @ p.T, b + pw * w @ p @ p.T
    return torch.linalg.solve(a, b.T).T  # A symmetric: W' = B A^{-1} <=> A W'^T = B^T


def _preserve(p, cols):
    """None, or P with `cols` columns (10 takes the k < in path, 48 the in x in path)."""
    if cols == 0:
        return None
    gen = torch.Generator().manual_seed(cols)
    return p if cols == p.shape[1] else _rand(gen, p.shape[0], cols)


@pytest.mark.parametrize("cols", [0, 10, 48])
@pytest.mark.parametrize("lam", [1e-3, 1e-1, 1.0, 1e2])
def test_normal_equations_and_direct_formula(data, lam, cols):
    w, x, y, p = data
    p = _preserve(p, cols)
    delta = solve_delta(w, x, y, lam, p, preserve_weight=2.0)
    assert delta.dtype == F64 and delta.shape == w.shape
    assert normal_equation_residual(w, delta, x, y, lam, p, 2.0) <= 1e-8
    expected = _direct(w, x, y, lam, p, 2.0)
    assert ((w + delta - expected).norm() / expected.norm()).item() <= 1e-10


def test_more_tokens_than_width(data):
    w, _, _, _ = data
    gen = torch.Generator().manual_seed(1)
    x, y = _rand(gen, 32, 48), _rand(gen, 32, 48)
    delta = solve_delta(w, x, y, 0.5)
    assert normal_equation_residual(w, delta, x, y, 0.5) <= 1e-8
    expected = _direct(w, x, y, 0.5)
    assert ((w + delta - expected).norm() / expected.norm()).item() <= 1e-10


def test_tall_weight_crosses_row_blocks(data):
    _, x, y, p = data
    w = _rand(torch.Generator().manual_seed(4), 600, 32)  # 600 rows: blocks of 256, 256, 88
    delta = solve_delta(w.float(), x, y, 0.3, p)
    expected = _direct(w.float().double(), x, y, 0.3, p)
    assert ((w.float().double() + delta - expected).norm() / expected.norm()).item() <= 1e-10


def test_small_lambda_maps_edited_states_onto_targets(data):
    # In exact arithmetic W'X - WY = -lam W (Y - X)(lam I + X^T X)^{-1}: error ~ lam / s_min(X)^2.
    w, x, y, _ = data
    errors = {}
    for lam in (1e-3, 1e-5):
        w_new = w + solve_delta(w, x, y, lam)
        errors[lam] = ((w_new @ x - w @ y).norm(dim=0) / (w @ y).norm(dim=0)).max().item()
    assert errors[1e-3] <= 1e-3
    assert errors[1e-5] <= errors[1e-3] / 50  # shrinks linearly with lambda


def test_preservation_keeps_preserved_outputs(data):
    w, x, y, p = data
    lam = 1e-3
    drift = {}
    for name, pres in (("with", p), ("without", None)):
        w_new = w + solve_delta(w, x, y, lam, pres, preserve_weight=1.0)
        drift[name] = ((w_new @ p - w @ p).norm() / (w @ p).norm()).item()
    assert drift["with"] <= 1e-3
    assert drift["without"] >= 0.05  # the edit does move unrelated states when unconstrained
    assert drift["with"] <= drift["without"] / 100
    # and the edit itself still lands
    w_new = w + solve_delta(w, x, y, lam, p)
    assert ((w_new @ x - w @ y).norm() / (w @ y).norm()).item() <= 1e-2


def test_huge_lambda_leaves_weight_alone(data):
    w, x, y, p = data
    for pres in (None, p):
        delta = solve_delta(w, x, y, 1e12, pres)
        assert (delta.norm() / w.norm()).item() <= 1e-8


def test_rank_of_update_is_at_most_number_of_tokens(data):
    w, x, y, p = data
    n = x.shape[1]
    for pres in (None, p):
        s = torch.linalg.svdvals(solve_delta(w, x, y, 1e-2, pres))
        assert s[n - 1] > 1e-6 * s[0]  # generic data: exactly rank n
        assert s[n:].max() <= 1e-12 * s[0]


def test_system_is_reused_across_matrices(data):
    w, x, y, p = data
    w2 = _rand(torch.Generator().manual_seed(5), 17, 32)
    system = EditSystem.build(x, y, 0.1, p, 3.0)
    for mat in (w, w2):
        torch.testing.assert_close(
            system.delta(mat), solve_delta(mat, x, y, 0.1, p, 3.0), rtol=1e-13, atol=0
        )
        assert normal_equation_residual(mat, system.delta(mat), x, y, 0.1, p, 3.0) <= 1e-8


def test_factors_are_the_exact_rank_n_form(data):
    w, x, y, p = data
    system = EditSystem.build(x, y, 0.1, p)
    a, m = system.factors(w.float())
    assert a.shape == (40, 6) and m.shape == (6, 32) and a.dtype == m.dtype == F64
    torch.testing.assert_close(a, w.float().double() @ (y - x), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(a @ m, system.delta(w.float()), rtol=0, atol=0)


def test_empty_edit_is_zero_and_float32_inputs_are_promoted(data):
    w, x, _, p = data
    delta = solve_delta(w.float(), x[:, :0].float(), x[:, :0].float(), 1.0, p.float())
    assert delta.dtype == F64 and torch.equal(delta, torch.zeros(40, 32, dtype=F64))
    delta = solve_delta(w.float(), x.float(), x.flip(1).float(), 1.0)
    assert delta.dtype == F64 and bool(delta.abs().sum() > 0)


@pytest.mark.parametrize("pos", [(3, 2), (-1, -1)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["weight", "x", "y", "preserve"])
def test_non_finite_inputs_raise(data, bad, where, pos):
    tensors = dict(zip(("weight", "x", "y", "preserve"), (t.clone() for t in data), strict=True))
    tensors[where][pos] = bad
    with pytest.raises(EditError, match=f"{where} contains NaN or Inf"):
        solve_delta(tensors["weight"], tensors["x"], tensors["y"], 1.0, tensors["preserve"])


def test_overflowing_result_or_system_raises():
    x = torch.eye(32, 4, dtype=F64)
    with pytest.raises(EditError, match=r"W \(Y - X\) is not finite"):
        solve_delta(torch.full((8, 32), 1e307, dtype=F64), x, x + 100.0, 1.0)
    # W (Y - X) ~ 3e159 and X^T A^{-1} ~ 5e149 are finite; their product is not
    tiny = x * 1e-150
    with pytest.raises(EditError, match="the weight update is not finite"):
        solve_delta(torch.full((8, 32), 1e158, dtype=F64), tiny, tiny + 1.0, 1e-300)
    with pytest.raises(EditError, match="overflowed"):
        solve_delta(torch.ones(8, 32, dtype=F64), x * 1e200, x, 1.0)


def test_bad_shapes_name_the_dimensions(data):
    w, x, y, p = data
    with pytest.raises(EditError, match="x has 32 rows but the weight reads 24-d states"):
        solve_delta(w[:, :24], x, y, 1.0)
    with pytest.raises(EditError, match="y has 5 columns but x has 6"):
        solve_delta(w, x, y[:, :5], 1.0)
    with pytest.raises(EditError, match="y has 30 rows but x has 32"):
        solve_delta(w, x, y[:30], 1.0)
    with pytest.raises(EditError, match="preserve has 30 rows but x has 32"):
        solve_delta(w, x, y, 1.0, p[:30])
    with pytest.raises(EditError, match=r"x must be a 2-D .* got \(32,\)"):
        solve_delta(w, x[:, 0], y, 1.0)
    with pytest.raises(EditError, match=r"weight must be a 2-D"):
        solve_delta(w[0], x, y, 1.0)


@pytest.mark.parametrize("lam", [0.0, -1.0, float("nan"), float("inf")])
def test_lambda_must_be_positive(data, lam):
    w, x, y, _ = data
    with pytest.raises(EditError, match="lambda must be a finite number > 0"):
        solve_delta(w, x, y, lam)


def test_preserve_weight_must_be_non_negative(data):
    w, x, y, p = data
    with pytest.raises(EditError, match="preserve_weight must be a finite number >= 0"):
        solve_delta(w, x, y, 1.0, p, preserve_weight=-1.0)
    # w = 0 ignores P: same as no preservation
    torch.testing.assert_close(solve_delta(w, x, y, 1.0, p, 0.0), solve_delta(w, x, y, 1.0))


@settings(max_examples=60, deadline=None)
@given(
    out_dim=st.integers(1, 12),
    width=st.integers(1, 12),
    n=st.integers(0, 14),
    cols=st.integers(0, 14),
    log_lam=st.floats(-3, 3),
    pw=st.sampled_from([0.0, 0.5, 1.0, 10.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_residual_stays_small_for_random_shapes(out_dim, width, n, cols, log_lam, pw, seed):
    gen = torch.Generator().manual_seed(seed)
    w, x, y = _rand(gen, out_dim, width), _rand(gen, width, n), _rand(gen, width, n)
    p = _rand(gen, width, cols) if cols else None
    lam = 10.0**log_lam
    delta = solve_delta(w, x, y, lam, p, pw)
    assert normal_equation_residual(w, delta, x, y, lam, p, pw) <= 1e-8
