"""Time LocoEdit's closed form on one CPU core with random weights of the real shapes.

Scenarios (weights float32 as stored in the checkpoints; the edit itself runs in float64):
  (a) SD-1.5, one concept: all 16 cross-attention sites, to_k and to_v (768-d text states).
  (b) SD-XL, one concept: all 70 cross-attention sites, to_k and to_v (2048-d text states).
  (c) SD-1.5, 100 concepts in one recipe: 100 concepts x 3 prompts x 1 token = 300 edit columns.
A "concept" here contributes --edit-cols edit columns (one token state per prompt), and every
scenario preserves 20 prompts (one state column each).  A timed run builds one EditSystem per
distinct state width, then for every matrix either

  factors: the exact rank-n update as (a, m) with dW = a @ m (EditSystem.factors), or
  dense:   the dense float64 dW (EditSystem.delta), dropped after each matrix.

The last line times (b) once more keeping every dense dW alive, as a {path: dW} store would.

Usage: python scripts/bench_edit.py [--repeats 3] [--edit-cols 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from locopack.edit.closed_form import EditSystem, normal_equation_residual

SD15_OUT = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]
SDXL_OUT = [640] * 4 + [1280] * 20 + [1280] * 10 + [1280] * 30 + [640] * 6
LAM, PRESERVE = 0.1, 20


def _weights(out_dims: list[int], width: int, gen: torch.Generator) -> list[torch.Tensor]:
    """to_k and to_v of every site, float32, scaled like a trained projection."""
    return [torch.randn(o, width, generator=gen) / width**0.5 for o in out_dims for _ in "kv"]


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _scenario(name, out_dims, width, n, goal, repeats, gen):
    weights = _weights(out_dims, width, gen)
    x, y, p = (torch.randn(width, c, generator=gen) for c in (n, n, PRESERVE))

    def factors():
        system = EditSystem.build(x, y, LAM, p)
        for w in weights:
            system.factors(w)

    def dense():
        system = EditSystem.build(x, y, LAM, p)
        for w in weights:
            system.delta(w)

    dense()  # warm-up (MKL initialisation, allocator)
    t_factors, t_dense = _timed(factors, repeats), _timed(dense, repeats)
    big = max(weights, key=lambda w: w.shape[0])
    delta = EditSystem.build(x, y, LAM, p).delta(big)
    residual = normal_equation_residual(big, delta, x, y, LAM, p)
    return (name, len(weights), width, n, t_factors, t_dense, goal, residual), weights, (x, y, p)


def _met(sec: float, goal: float | None) -> str:
    return "-" if goal is None else ("yes" if sec < goal else "NO")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--edit-cols", type=int, default=10, help="edit columns of one concept")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    n1 = args.edit_cols
    a, _, _ = _scenario("(a) SD-1.5, 16 sites", SD15_OUT, 768, n1, None, args.repeats, gen)
    b, xl_weights, xl_states = _scenario(
        "(b) SD-XL, 70 sites", SDXL_OUT, 2048, n1, 1.0, args.repeats, gen
    )
    c, _, _ = _scenario("(c) SD-1.5, 100 concepts", SD15_OUT, 768, 300, 5.0, args.repeats, gen)

    print(f"LocoEdit closed form, 1 CPU thread, median of {args.repeats} runs, lambda={LAM}")
    print(
        f"{'scenario':<25}{'mats':>5}{'in':>6}{'cols':>6}{'keep':>6}"
        f"{'factors s':>11}{'dense s':>9}{'goal s':>8}{'met (factors/dense)':>21}{'residual':>10}"
    )
    for name, mats, width, n, t_f, t_d, goal, res in (a, b, c):
        goal_s = "-" if goal is None else f"< {goal:g}"
        met = f"{_met(t_f, goal)} / {_met(t_d, goal)}"
        print(
            f"{name:<25}{mats:>5}{width:>6}{n:>6}{PRESERVE:>6}"
            f"{t_f:>11.3f}{t_d:>9.3f}{goal_s:>8}{met:>21}{res:>10.1e}"
        )
    print("cols: edit columns of X/Y; keep: preserved columns of P; residual: relative")
    print("normal-equation residual of the widest matrix (float64), see normal_equation_residual")

    system = EditSystem.build(*xl_states[:2], LAM, xl_states[2])
    start = time.perf_counter()
    kept = [system.delta(w) for w in xl_weights]
    sec = time.perf_counter() - start
    gib = sum(d.numel() * d.element_size() for d in kept) / 2**30
    print(f"(b) keeping all {len(kept)} dense float64 dW alive ({gib:.1f} GiB): {sec:.3f} s, 1 run")


if __name__ == "__main__":
    main()
