"""The outcome of a LocoGen sweep: ``localization.json`` and ``localization.png``."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from ..filenames import LOCALIZATION_FILE, LOCALIZATION_PLOT
from ..storage import atomic_write_bytes, atomic_write_text
from .editable import TrailStep

FORMAT = "locopack.localization/1"

#: facts of one run, kept on the objects but never written: a repeated or resumed sweep (its
#: scores taken from the cache) writes the same bytes; the build's durations go to the history
RUN_FACTS = frozenset({"seconds", "cached", "timings"})


def _without_run_facts(items: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: value for key, value in items if key not in RUN_FACTS}


@dataclass
class Candidate:
    """Scores of one window: raw scores per probe and seed, their mean/std, the objective."""

    window: list[str]
    scores: list[float]
    mean: float
    std: float
    objective: float
    seconds: float = 0.0
    cached: bool = False

    @classmethod
    def from_scores(cls, window, scores, signs, seconds=0.0, cached=False) -> Candidate:
        """Summarize raw scores; ``objective`` is the mean of ``sign * score``."""
        return cls(
            window=list(window),
            scores=list(scores),
            mean=statistics.fmean(scores),
            std=statistics.pstdev(scores) if len(scores) > 1 else 0.0,
            objective=statistics.fmean(s * g for s, g in zip(scores, signs, strict=True)),
            seconds=seconds,
            cached=cached,
        )


@dataclass
class Round:
    """One round of a race: its settings, the probes (indices into ``pairs``) and windows
    (indices into ``candidates``) it scored, and their scores."""

    rung: dict
    probes: list[int]
    windows: list[int]
    candidates: list[Candidate]

    @classmethod
    def from_dict(cls, data: dict) -> Round:
        """The inverse of ``dataclasses.asdict``."""
        return cls(**{**data, "candidates": [Candidate(**c) for c in data["candidates"]]})


@dataclass
class LocalizationResult:
    """Every window's scores, the chosen window, and the baseline/all-sites references
    (plus, for joint-attention transformers, ``pooled_only``: the pooled text path swapped
    alone, every site at the original prompt).

    ``candidates[i]`` holds window ``i``'s scores at full settings when it was a finalist
    (every window in full mode), else its scores in the last race round it reached;
    ``screening`` keeps every window's screening scores and ``rounds`` every round of the
    race (fast mode).  The reference lines are scored at ``reference_rung`` (cheap settings
    unless full ones were asked for).

    With ``select: editable`` (:mod:`.editable`), ``trail`` holds every set of sites tried
    and what its edit's check measured, ``check`` how the checks were drawn and judged, and
    ``selected`` the sites kept, which :attr:`layers` then returns.  Files written before
    these fields existed load with ``select: score``.
    """

    candidates: list[Candidate]
    chosen: int
    baseline: Candidate
    all_sites: Candidate
    finalists: list[int]
    rung: dict
    mode: str
    window: int
    site_paths: list[str]
    pairs: list[dict]
    screening_rung: dict | None = None
    screening: list[Candidate] | None = None
    rounds: list[Round] | None = None
    reference_rung: dict | None = None
    pooled_only: Candidate | None = None
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    select: str = "score"
    trail: list[TrailStep] | None = None
    check: dict[str, Any] | None = None
    selected: list[str] | None = None

    @property
    def layers(self) -> list[str]:
        """Module paths of the sites to edit: the selected ones, else the chosen window's."""
        return self.selected or self.candidates[self.chosen].window

    def cache_counts(self) -> tuple[int, int]:
        """How many of the scored entries (windows per round, reference lines) came from the
        cache, and of how many."""
        rounds = [c for r in self.rounds for c in r.candidates] if self.rounds else self.candidates
        lines = [self.baseline, self.all_sites] + [c for c in [self.pooled_only] if c]
        entries = [*rounds, *lines]
        return sum(c.cached for c in entries), len(entries)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (the content of ``localization.json``), without the run facts
        (:data:`RUN_FACTS`); older files that carry them still load."""
        data = asdict(self, dict_factory=_without_run_facts)
        data["format"] = FORMAT
        data["chosen_layers"] = self.layers
        return data

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``localization.json`` and ``localization.png`` atomically into ``folder``."""
        folder = Path(folder)
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        return (
            atomic_write_text(folder / LOCALIZATION_FILE, text + "\n"),
            atomic_write_bytes(folder / LOCALIZATION_PLOT, self.plot()),
        )

    @classmethod
    def load(cls, path: str | Path) -> LocalizationResult:
        """Read a ``localization.json``.

        Raises:
            RecipeError: the file is missing, not JSON, or not a localization result.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.pop("format", None) != FORMAT:
                raise ValueError(f"expected format {FORMAT!r}")
            data.pop("chosen_layers", None)
            for key in ("baseline", "all_sites"):
                data[key] = Candidate(**data[key])
            if data.get("pooled_only") is not None:
                data["pooled_only"] = Candidate(**data["pooled_only"])
            data["candidates"] = [Candidate(**c) for c in data["candidates"]]
            if data.get("screening") is not None:
                data["screening"] = [Candidate(**c) for c in data["screening"]]
            if data.get("rounds") is not None:
                data["rounds"] = [Round.from_dict(r) for r in data["rounds"]]
            if data.get("trail") is not None:
                data["trail"] = [TrailStep.from_dict(t) for t in data["trail"]]
            chosen = data.get("chosen")
            if type(chosen) is not int or not 0 <= chosen < len(data["candidates"]):
                raise ValueError(
                    f"'chosen' must be a window index from 0 to {len(data['candidates']) - 1}, "
                    f"found {chosen!r}"
                )
            return cls(**data)
        except (OSError, ValueError, TypeError, KeyError) as err:
            raise RecipeError(f"{path}: not a readable localization result ({err})") from None

    def plot(self) -> bytes:
        """PNG bytes: every window's mean and spread, the reference lines, the chosen window
        (drawn by :mod:`.plot`)."""
        from .plot import localization_png

        return localization_png(self)
