"""Recipe fuzzing, the oracle: ``validate`` and ``build`` must agree on every case.

Every case of :mod:`tests.recipe_fuzz_cases` runs ``locopack validate`` and, when validate
accepts it, ``locopack build`` with the LocoGen sweep replaced by a sentinel: reaching the sweep
is agreement.  An outcome is one of :data:`OUTCOMES`; a case must end within its time limit and
never in an exception other than a ``LocopackError``.

Used by ``tests/test_recipe_fuzz.py`` (a few hundred cases) and ``scripts/fuzz_recipes.py``
(thousands, printing the counts).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.recipe_fuzz_cases import SECRET, SECRET_ENV, Case, make_playground, semantic_case

#: validate refused; validate accepted and build reached the sweep; build refused what validate
#: accepted; a case ran past its time limit; an exception other than a LocopackError
OUTCOMES = ("rejected", "reached_sweep", "build_rejected", "hang", "traceback")


class Hang(BaseException):
    """A case ran past its time limit (a BaseException: nothing on the way may swallow it)."""


class ReachedSweep(BaseException):
    """The build got to the LocoGen sweep: everything before it accepted the recipe."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Hang` in the block once it has run ``seconds``."""

    def expire(*_):
        raise Hang(f"ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Outcome:
    """How a case ended: one of :data:`OUTCOMES`, with the message that says why."""

    kind: str
    message: str = ""
    #: validate accepted the recipe
    accepted: bool = False


def _sweep(*_args, **_kwargs):
    raise ReachedSweep


def _cached(function: Callable) -> Callable:
    """``function`` memoized on its arguments, its errors too (the toy pipeline is read only
    before the sweep, so every build may share one copy)."""
    cache: dict = {}

    def call(*args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in cache:
            try:
                cache[key] = (True, function(*args, **kwargs))
            except Exception as err:  # noqa: BLE001 - replayed to every later caller
                cache[key] = (False, err)
        ok, value = cache[key]
        if not ok:
            raise value.with_traceback(None)
        return value

    return call


@contextlib.contextmanager
def oracle_patches(plugins: Path, share_loads: bool = True) -> Iterator[None]:
    """The sweep replaced by :class:`ReachedSweep`; pipelines loaded once per argument set;
    the fuzz's credential in the environment; the Hub switched off; the ``plugins`` folder
    on ``sys.path``."""
    import locopack.models
    import locopack.pipeline.build as build

    loading = locopack.models.loading
    saved = build.layers_or_localize, locopack.models.load_pipeline, loading.load_pipeline
    env = {name: os.environ.get(name) for name in (SECRET_ENV, "HF_HUB_OFFLINE")}
    build.layers_or_localize = _sweep
    if share_loads:
        locopack.models.load_pipeline = _cached(locopack.models.load_pipeline)
        loading.load_pipeline = locopack.models.load_pipeline  # the base loader's
    os.environ.update({SECRET_ENV: SECRET, "HF_HUB_OFFLINE": "1"})
    sys.path.insert(0, str(plugins))
    try:
        yield
    finally:
        sys.path.remove(str(plugins))
        build.layers_or_localize, locopack.models.load_pipeline, loading.load_pipeline = saved
        for name, value in env.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def _invoke(args: list[str]) -> tuple[str, str]:
    """Run the CLI: ``("ok" | "error" | "traceback", output)``; the sentinels propagate."""
    import traceback

    from click.testing import CliRunner

    from locopack.cli import cli

    result = CliRunner().invoke(cli, args)
    if isinstance(result.exception, ReachedSweep | Hang):
        raise result.exception
    if result.exit_code == 0:
        return "ok", result.output
    if isinstance(result.exception, SystemExit):
        return "error", result.output.strip()
    text = "".join(traceback.format_exception(*result.exc_info))
    return "traceback", text


def run_case(case: Case, folder: Path, limit: float = 60.0) -> Outcome:
    """Validate ``case`` (written into ``folder``), then build it up to the sweep if valid.

    Must run inside :func:`oracle_patches`."""
    recipe, out = folder / "fuzz.yaml", folder.parent / "out"
    recipe.write_text(case.text, encoding="utf-8", errors="surrogatepass")
    flags = ["--threads", "1"] + (["--allow-code"] if case.allow_code else [])
    flags += ["--prompt-dir", str(folder.parent / "outside")] if case.prompt_dir else []
    start, accepted = time.perf_counter(), False
    try:
        with time_limit(limit):
            kind, output = _invoke([*flags, "validate", str(recipe), "--offline"])
            if kind != "ok":
                return Outcome("rejected" if kind == "error" else kind, output)
            accepted = True
            try:
                kind, output = _invoke(
                    [*flags, "build", str(recipe), "--out", str(out), "--offline"]
                )
            except ReachedSweep:
                return Outcome("reached_sweep", accepted=True)
            kind = "build_rejected" if kind in ("error", "ok") else kind
            return Outcome(kind, output, accepted=True)
    except Hang as err:
        return Outcome("hang", str(err), accepted)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        elapsed = time.perf_counter() - start
        case.labels.append(f"({elapsed:.2f} s)")


def fuzz(
    count: int, seed: int, root: Path, echo: Callable[[str], Any] = print, limit: float = 60.0
) -> dict[str, Any]:
    """Run ``count`` cases of the run ``seed`` in a playground under ``root``.

    Returns:
        ``{"counts": {...}, "failures": [(case, outcome), ...], "known": [...]}``; counts hold
        ``generated``, ``accepted`` and every outcome; failures are the hangs, tracebacks and
        build refusals not on :data:`KNOWN`'s list, ``known`` those that are.
    """
    folder = make_playground(root)
    counts = dict.fromkeys(("generated", "accepted", *OUTCOMES), 0)
    failures, known = [], []
    with oracle_patches(root / "plugins"):
        for index in range(count):
            case = semantic_case(index, seed)
            outcome = run_case(case, folder, limit)
            counts["generated"] += 1
            counts[outcome.kind] += 1
            counts["accepted"] += outcome.accepted
            if outcome.kind in ("reached_sweep", "rejected"):
                continue
            (known if case.known else failures).append((case, outcome))
            echo(report_line(case, outcome))
    return {"counts": counts, "failures": failures, "known": known}


def report_line(case: Case, outcome: Outcome) -> str:
    """One failing case: its number, kind, mutations and message (first lines)."""
    why = f" [known: {'; '.join(case.known)}]" if case.known else ""
    lines = [_cut(line) for line in outcome.message.strip().splitlines()[-12:]]
    message = "\n    ".join(lines)
    return f"case {case.index}: {outcome.kind}{why}\n  {'; '.join(case.labels)}\n    {message}"


def _cut(line: str, limit: int = 300) -> str:
    return line if len(line) <= limit else f"{line[:limit]}... ({len(line)} characters)"
