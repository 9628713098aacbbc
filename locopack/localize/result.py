"""The outcome of a LocoGen sweep: ``localization.json`` and ``localization.png``."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from pydantic import Field, computed_field, field_validator, model_validator

from ..errors import LocopackError, RecipeError
from ..filenames import LOCALIZATION_FILE, LOCALIZATION_PLOT
from ..record import JsonObject, Record, RecordPart
from ..storage import atomic_write_bytes, atomic_write_text
from .editable import TrailStep

FORMAT = "locopack.localization/1"


class Candidate(RecordPart):
    """Scores of one window: raw scores per probe and seed, their mean/std, the objective.

    ``seconds`` and ``cached`` are facts of one run, kept on the object but never written: a
    repeated or resumed sweep (its scores taken from the cache) writes the same bytes; older
    files that carry them still load."""

    window: list[str]
    scores: list[float]
    mean: float
    std: float
    objective: float
    seconds: float = Field(default=0.0, exclude=True)
    cached: bool = Field(default=False, exclude=True)

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


class Round(RecordPart):
    """One round of a race: its settings, the probes (indices into ``pairs``) and windows
    (indices into ``candidates``) it scored, and their scores."""

    rung: JsonObject
    probes: list[int]
    windows: list[int]
    candidates: list[Candidate]


class LocalizationResult(Record):
    """``localization.json``: every window's scores, the chosen window, and the
    baseline/all-sites references (plus, for joint-attention transformers, ``pooled_only``:
    the pooled text path swapped alone, every site at the original prompt).

    ``candidates[i]`` holds window ``i``'s scores at full settings when it was a finalist
    (every window in full mode), else its scores in the last race round it reached;
    ``screening`` keeps every window's screening scores and ``rounds`` every round of the
    race (fast mode).  The reference lines are scored at ``reference_rung`` (cheap settings
    unless full ones were asked for).

    With ``select: editable`` (:mod:`.editable`), ``trail`` holds every set of sites tried
    and what its edit's check measured, ``check`` how the checks were drawn and judged, and
    ``selected`` the sites kept, which :attr:`layers` then returns.  Files written before
    these fields existed load with ``select: score``.  ``timings`` (the seconds of each part
    of the run) is never written, like a candidate's ``seconds``.
    """

    FORMAT = FORMAT
    candidates: list[Candidate]
    chosen: int
    baseline: Candidate
    all_sites: Candidate
    finalists: list[int]
    rung: JsonObject
    mode: str
    window: int
    site_paths: list[str]
    pairs: list[JsonObject]
    screening_rung: JsonObject | None = None
    screening: list[Candidate] | None = None
    rounds: list[Round] | None = None
    reference_rung: JsonObject | None = None
    pooled_only: Candidate | None = None
    timings: dict[str, float] = Field(default_factory=dict, exclude=True)
    meta: JsonObject = Field(default_factory=dict)
    select: str = "score"
    trail: list[TrailStep] | None = None
    check: JsonObject | None = None
    selected: list[str] | None = None

    @model_validator(mode="before")
    @classmethod
    def _derived(cls, data: object) -> object:
        """``chosen_layers`` is written for readers of the file; it is derived, not read."""
        if isinstance(data, dict) and "chosen_layers" in data:
            data = {k: v for k, v in data.items() if k != "chosen_layers"}
        return data

    @field_validator("chosen", mode="before")
    @classmethod
    def _an_index(cls, value: object) -> object:
        if type(value) is not int:
            raise ValueError(f"'chosen' must be a window index, found {value!r}")
        return value

    @model_validator(mode="after")
    def _chosen_in_range(self) -> LocalizationResult:
        if not 0 <= self.chosen < len(self.candidates):
            raise ValueError(
                f"'chosen' must be a window index from 0 to {len(self.candidates) - 1}, "
                f"found {self.chosen!r}"
            )
        return self

    @computed_field
    @property
    def chosen_layers(self) -> list[str]:
        """Module paths of the sites to edit (:attr:`layers`), written for readers."""
        return self.layers

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

    def to_dict(self) -> JsonObject:
        """JSON-ready view (the content of ``localization.json``), without the run facts."""
        return {**self.model_dump(mode="json", by_alias=True), "format": FORMAT}

    def text(self) -> str:
        """The file's text: sorted keys, indented by two, one trailing newline."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``localization.json`` and ``localization.png`` atomically into ``folder``."""
        folder = Path(folder)
        return (
            atomic_write_text(folder / LOCALIZATION_FILE, self.text()),
            atomic_write_bytes(folder / LOCALIZATION_PLOT, self.plot()),
        )

    @classmethod
    def load(cls, path: str | Path) -> LocalizationResult:
        """Read a ``localization.json``.

        Raises:
            RecipeError: the file is missing, not JSON, or not a localization result.
        """
        try:
            return cls.read(path)
        except LocopackError as err:
            raise RecipeError(f"{err} (not a readable localization result)") from None

    def plot(self) -> bytes:
        """PNG bytes: every window's mean and spread, the reference lines, the chosen window
        (drawn by :mod:`.plot`)."""
        from .plot import localization_png

        return localization_png(self)
