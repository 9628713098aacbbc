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

  (d) FLUX.1, one concept: the 19 double-stream blocks, add_k_proj and add_v_proj (3072-d text
      streams of 512 T5 tokens).  Every site reads its own stream, so each builds its own
      EditSystem, from columns collected at seeds x timesteps (--probes, 2 x 3 by default):
      --edit-cols x probes edit columns and 20 x probes preserve columns per site.  The solve
      alone is timed (the collection runs the transformer and is not part of it); one random
      pair of 3072 x 3072 weights serves every block (the cost does not depend on the values,
      and 38 distinct matrices would take 1.4 GB to hold).

Usage: python scripts/bench_edit.py [--repeats 3] [--edit-cols 10] [--probes 6]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from locopack.edit.closed_form import EditSystem, normal_equation_residual

SD15_OUT = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]
SDXL_OUT = [640] * 4 + [1280] * 20 + [1280] * 10 + [1280] * 30 + [640] * 6
FLUX_BLOCKS, FLUX_WIDTH, FLUX_T5 = 19, 3072, 512
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


def _flux(n: int, probes: int, gen: torch.Generator) -> tuple[float, float, float]:
    """(d): seconds to solve all double blocks (factors, dense) and the widest residual."""
    key, value = (
        torch.randn(FLUX_WIDTH, FLUX_WIDTH, generator=gen) / FLUX_WIDTH**0.5 for _ in "kv"
    )
    cols, keep = n * probes, PRESERVE * probes
    sites = [
        tuple(torch.randn(FLUX_WIDTH, c, generator=gen) for c in (cols, cols, keep))
        for _ in range(FLUX_BLOCKS)
    ]
    times = {}
    for name, method in (("factors", EditSystem.factors), ("dense", EditSystem.delta)):
        start = time.perf_counter()
        for x, y, p in sites:
            system = EditSystem.build(x, y, LAM, p)
            method(system, key)
            method(system, value)
        times[name] = time.perf_counter() - start
    x, y, p = sites[-1]
    delta = EditSystem.build(x, y, LAM, p).delta(value)
    return times["factors"], times["dense"], normal_equation_residual(value, delta, x, y, LAM, p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement")
    parser.add_argument("--edit-cols", type=int, default=10, help="edit columns of one concept")
    parser.add_argument("--probes", type=int, default=6, help="(d): seeds x timesteps collected")
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

    del kept
    t_f, t_d, res = _flux(n1, args.probes, gen)
    print(
        f"(d) FLUX.1, {FLUX_BLOCKS} double blocks, {2 * FLUX_BLOCKS} mats of {FLUX_WIDTH}x"
        f"{FLUX_WIDTH} ({FLUX_T5}-token T5 streams), one system per site, "
        f"{n1 * args.probes} edit + {PRESERVE * args.probes} preserve columns each: factors "
        f"{t_f:.3f} s, dense {t_d:.3f} s (1 run), residual {res:.1e}"
    )


if __name__ == "__main__":
    main()
