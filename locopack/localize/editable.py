"""Edit-aware localization (``localize.select: editable``): the sets of sites to try, and the
record of trying them.

LocoGen ranks windows by how much the altered prompt moves the images when fed to just that
window; a window that ranks first need not be one whose edit removes the concept.  The sets
tried grow from LocoGen's best window by uniting, one at a time, the next window in its
ranking (:func:`nested_sets`): a neighbour of the sets so far grows them in network order, a
distant one unites disjoint windows; the last set is every site.  The sets are nested, so an
edit's efficacy is taken to grow along them, and :func:`smallest_meeting` finds the first set
that meets the requirement with few checks (galloping, then bisecting).  That set is then
pruned: each group of sites an earlier set added (LocoGen's window first) is left out where
the edit meets the requirement without it, since a concept that several sites carry
redundantly can rank high windows that its edit does not need.  What each check measured is
a :class:`TrailStep`; ``localization.json`` keeps the trail.

The checks themselves (LocoEdit, images, detectors) belong to the release side
(:mod:`locopack.pipeline.select_sites`): this module needs no model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .views import RankedWindows

SELECT_MODES = ("score", "editable")


def ranking(result: RankedWindows) -> list[int]:
    """Window indices best first: in a race, the windows that reached a later round first,
    then by objective (lower is better), then by position."""
    reached = {i: 0 for i in range(len(result.candidates))}
    for number, one in enumerate(result.rounds or []):
        reached.update({i: number for i in one.windows})
    objective = [c.objective for c in result.candidates]
    order = sorted(reached, key=lambda i: (-reached[i], objective[i], i))
    order.remove(result.chosen)  # the chosen window leads, whatever ties say
    return [result.chosen, *order]


def nested_sets(result: RankedWindows) -> list[tuple[list[int], int | None]]:
    """The site sets to try, smallest first: ``(site indices in network order, the window
    united last)``; the first is LocoGen's chosen window, each next one adds the sites of the
    next window in :func:`ranking` that it does not yet hold, the last is every site."""
    size = result.window
    held: set[int] = set()
    out: list[tuple[list[int], int | None]] = []
    for window in ranking(result):
        sites = set(range(window, window + size))
        if not sites <= held:
            held |= sites
            out.append((sorted(held), window))
    every = list(range(len(result.site_paths)))
    if out[-1][0] != every:
        out.append((every, None))
    return out


def smallest_meeting(count: int, meets: Callable[[int], bool]) -> int | None:
    """The smallest index below ``count`` where ``meets`` holds, if it holds from there on:
    try 0, 1, 3, 7, ... (the last index at the end), then bisect between the last failure and
    the first success.  None: not even the last index meets."""
    failed, index, jump = -1, 0, 1
    while True:
        if meets(index):
            break
        failed = index
        if index == count - 1:
            return None
        index, jump = min(index + jump, count - 1), 2 * jump
    passed = index
    while passed - failed > 1:
        middle = (failed + passed) // 2
        if meets(middle):
            passed = middle
        else:
            failed = middle
    return passed


@dataclass
class TrailStep:
    """One set of sites tried: its sites, the window whose sites it added (or, with
    ``removed``, left out; None: every site), what the check measured (one item per edit,
    prompt set and requirement: ``measured``, ``threshold``, ``rule``, ``met``) and whether
    all were met."""

    sites: list[str]
    added: int | None
    checks: list[dict[str, object]] = field(default_factory=list)
    met: bool = False
    #: a pruning step: the sites it left out of the smallest set that met the requirement
    removed: list[str] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TrailStep:
        """The inverse of ``dataclasses.asdict``."""
        return cls(**data)


def trail_summary(steps: list[TrailStep], selected: list[str], count: int) -> str:
    """One line: how many sets were tried and how many of ``count`` sites were kept."""
    if any(s.met and s.sites == selected for s in steps):
        return f"{len(steps)} checks; {len(selected)} of {count} sites meet the requirement"
    return f"no set of sites met the requirement in {len(steps)} checks; all {count} edited"
