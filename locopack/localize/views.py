"""What :mod:`.editable` and :mod:`.plot` read of a LocoGen result, as protocols.

:class:`~locopack.localize.result.LocalizationResult` imports both modules, so they name the
shape they read here rather than importing the class (that would be an import cycle).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class ScoredWindow(Protocol):
    """One window's score (a :class:`~locopack.localize.result.Candidate`)."""

    @property
    def window(self) -> Sequence[str]: ...

    @property
    def mean(self) -> float: ...

    @property
    def std(self) -> float: ...

    @property
    def objective(self) -> float: ...


class RaceRound(Protocol):
    """One round of a race (a :class:`~locopack.localize.result.Round`)."""

    @property
    def windows(self) -> Sequence[int]: ...


class RankedWindows(Protocol):
    """What :func:`~locopack.localize.editable.ranking` reads of a result."""

    @property
    def candidates(self) -> Sequence[ScoredWindow]: ...

    @property
    def rounds(self) -> Sequence[RaceRound] | None: ...

    @property
    def chosen(self) -> int: ...

    @property
    def window(self) -> int: ...

    @property
    def site_paths(self) -> Sequence[str]: ...


class PlottedResult(RankedWindows, Protocol):
    """What :func:`~locopack.localize.plot.localization_png` reads of a result."""

    @property
    def baseline(self) -> ScoredWindow: ...

    @property
    def all_sites(self) -> ScoredWindow: ...

    @property
    def pooled_only(self) -> ScoredWindow | None: ...

    @property
    def finalists(self) -> Sequence[int]: ...

    @property
    def mode(self) -> str: ...

    @property
    def selected(self) -> Sequence[str] | None: ...

    @property
    def trail(self) -> Sequence[object] | None: ...
