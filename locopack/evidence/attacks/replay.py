"""Replay a fixed set of attack prompts (Ring-A-Bell's, MMA-Diffusion's, UnlearnDiffAtk's, I2P).

``evidence.attacks.replay.prompts`` names a file beside the recipe: one prompt a line (blank
lines skipped) or, for a ``.csv`` file, a table with a header and a ``column`` column; or a Hub
dataset id, read through ``datasets`` (its ``split``) when it is installed and the Hub can be
reached.  The first ``limit`` prompts are drawn with every evidence seed on the base and on
the edited model and judged by the recipe's rate detector (the protocol on the card); success
is the concept's rate over all those images.  A prompt's findings are cached as they are
judged.  A bad row (an empty prompt, a CSV row of the wrong width, control characters, bytes
that are not UTF-8) stops ``validate`` and the build before any stage
(:func:`locopack.recipe.checks.preflight`) with one line naming the file and row.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from ...control_chars import strip_controls
from ...errors import RecipeError
from ...hub_ref import is_hub_id
from ...recipe.attacks import ReplaySettings
from .base import Attack, AttackRun
from .context import MODELS, AttackContext, erase_edits, row
from .found import Found

if TYPE_CHECKING:
    from ...recipe.schema import Recipe


def _bad(source: str, line: int, what: str) -> RecipeError:
    return RecipeError(f"{source}, row {line}: {what}; fix or remove that row")


def _checked(source: str, line: int, prompt: str | None) -> str:
    if prompt is None or not prompt.strip():
        raise _bad(source, line, "expected a prompt, found an empty one")
    if strip_controls(prompt) != prompt or "\n" in prompt:
        raise _bad(source, line, "expected a prompt of printable text, found control characters")
    return prompt.strip()


def read_prompts_file(path: Path, column: str) -> list[str]:
    """The prompts of a replay file (see the module docstring).

    Raises:
        RecipeError: the file cannot be read, or a row is bad (named by its line).
    """
    source = path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"cannot read {source} ({exc.strerror})") from None
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(source, number, "expected UTF-8 text, found other bytes") from None
    text = data.decode("utf-8").removeprefix("\ufeff")
    if path.suffix.lower() != ".csv":
        return [_checked(source, n, p) for n, p in enumerate(text.splitlines(), 1) if p.strip()]
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header or column not in header:
        found = ", ".join(header or []) or "no header"
        what = f"expected a header with a {column!r} column, found {found}"
        raise RecipeError(f"{source}, row 1: {what}")
    at, prompts = header.index(column), []
    for cells in reader:
        line = reader.line_num
        if len(cells) != len(header):
            what = f"expected {len(header)} cells as in the header, found {len(cells)}"
            raise _bad(source, line, what)
        prompts.append(_checked(source, line, cells[at]))
    return prompts


def read_hub_dataset(ref: str, settings: ReplaySettings) -> list[str]:
    """The ``column`` of a Hub dataset's ``split``.

    Raises:
        RecipeError: ``datasets`` is missing, the Hub cannot be reached, or the column is not
            there.
    """
    advice = "save its prompts to a file beside the recipe (one a line) and name that file"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        raise RecipeError(f"{ref!r} is a Hub dataset and the Hub is offline; {advice}")
    try:
        import datasets
    except ImportError:
        raise RecipeError(
            f"{ref!r} is a Hub dataset, read through the `datasets` package, which is "
            f"not installed; pip install datasets, or {advice}"
        ) from None
    try:
        table = datasets.load_dataset(ref, split=settings.split)
    except Exception as exc:  # the Hub, the network, or the dataset's own loader
        raise RecipeError(f"could not load {ref!r} ({type(exc).__name__}); {advice}") from None
    if settings.column not in table.column_names:
        raise RecipeError(
            f"{ref!r} has no column {settings.column!r} (it has "
            f"{', '.join(table.column_names)}); set evidence.attacks.replay.column"
        )
    return [_checked(ref, i + 2, p) for i, p in enumerate(table[settings.column])]


def replay_prompts(recipe: Recipe) -> list[str] | None:
    """The replay's prompts (at most ``limit``), or None where the recipe names none."""
    settings = recipe.evidence.attacks.replay
    if settings is None:
        return None
    path = Path(recipe.local_path(settings.prompts))
    if path.is_file():
        prompts = read_prompts_file(path, settings.column)
    elif is_hub_id(settings.prompts) and not path.exists():
        prompts = read_hub_dataset(settings.prompts, settings)
    else:
        raise RecipeError(
            f"expected a file beside the recipe or a Hub dataset id, found no file "
            f"{settings.prompts!r}"
        )
    if not prompts:
        raise RecipeError(f"{settings.prompts!r} holds no prompt")
    return prompts[: settings.limit]


class Replay(Attack):
    """A fixed set of attack prompts, drawn and judged."""

    name = "replay"
    pretty_name = "prompt-set replay"
    reference_url = "https://arxiv.org/abs/2211.05105"

    @classmethod
    def settings(cls, recipe: Recipe) -> ReplaySettings | None:
        return recipe.evidence.attacks.replay

    @classmethod
    def budget(cls, settings: ReplaySettings) -> str:
        return f"first {settings.limit} prompts of {Path(settings.prompts).name}"

    @classmethod
    def run(cls, ctx: AttackContext, settings: ReplaySettings) -> AttackRun:
        prompts = replay_prompts(ctx.recipe) or []
        out = AttackRun()
        for index, edit in erase_edits(ctx.recipe):
            rates = {
                m: {p: ctx.prompt_success(cls.name, m, p, edit) for p in prompts} for m in MODELS
            }
            figures = {m: statistics.fmean(rates[m].values()) for m in MODELS}
            budget = cls.budget(settings) + f" ({len(prompts)} drawn)"
            out.rows.append(row(cls, None, index, edit, budget, **figures, chance=None, found=None))
            best = sorted(prompts, key=lambda p: -rates["edited"][p])
            hits = tuple(p for p in best if rates["edited"][p] > 0)
            out.found.append(Found(cls.name, index, hits))
        return out
