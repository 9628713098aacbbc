"""Fuzz recipes until ``locopack validate`` and ``locopack build`` agree.

Generates ``--count`` hostile recipes from the toy recipe (``tests/recipe_fuzz_cases.py``: field
values at and past their bounds, FIFOs, devices, ``/etc`` paths, plug-in detectors that name
``os:system``, alias bombs...), validates each, and builds every one that validate accepts up to
the LocoGen sweep.  Prints each failing case and the counts:

    python scripts/fuzz_recipes.py --count 2000 --seed 0

A failure is a case that hangs, ends in a traceback, or that validate accepts and build refuses
before the sweep; those another change is dealing with (``KNOWN`` in the cases) are counted on
their own.  Exits 1 when there is any other failure.  ``--case N`` reruns one case, showing its
recipe.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tests.recipe_fuzz_cases import make_playground, semantic_case  # noqa: E402
from tests.recipe_fuzz_oracle import fuzz, oracle_patches, report_line, run_case  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="recipes to generate")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds a case may take")
    parser.add_argument("--case", type=int, default=None, help="run this case alone, verbosely")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    home = tempfile.TemporaryDirectory(prefix="fuzz-home-")
    os.environ["HOME"] = os.environ["HF_HOME"] = home.name  # no user's Hub cache or token
    os.environ.pop("HF_TOKEN", None)
    with tempfile.TemporaryDirectory(prefix="fuzz-") as root:
        if args.case is not None:
            case = semantic_case(args.case, args.seed)
            print(case.text)
            folder = make_playground(Path(root))
            with oracle_patches(Path(root) / "plugins"):
                outcome = run_case(case, folder, args.limit)
            print(report_line(case, outcome))
            return 0
        start = time.perf_counter()
        found = fuzz(args.count, args.seed, Path(root), limit=args.limit)
    counts = found["counts"]
    print(f"\n{args.count} recipes, seed {args.seed}, {time.perf_counter() - start:.0f} s")
    for name in ("generated", "rejected", "accepted", "reached_sweep", "build_rejected"):
        print(f"  {name:<16}{counts[name]:>6}")
    for name in ("hang", "traceback"):
        print(f"  {name + 's':<16}{counts[name]:>6}")
    print(f"  failures        {len(found['failures']):>6}")
    print(f"  known elsewhere {len(found['known']):>6}")
    reasons = Counter(why for case, _ in found["known"] for why in dict.fromkeys(case.known))
    for why, n in reasons.most_common():
        print(f"    {n:>4}  {why}")
    return 1 if found["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
