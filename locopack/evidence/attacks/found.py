"""What an attack found: the prompts (and, where it has them, the states) that bring an erased
concept back on a model.  Robust erase (``edit.robust``) adds them as rows of its next solve."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...state_rows import StateRows


@dataclass(frozen=True)
class Found:
    """An attack's finds for one erase edit (``edit``: its index among the recipe's edits).

    ``prompts``: text that brought the concept back (best first).  ``rows``: optional
    continuous finds, as states the sites receive mapped to the states they should act like
    (:class:`~locopack.state_rows.StateRows`); only for families whose sites all read one
    encoded text (cross-attention).  ``guarded``: a time guard, not the attack's budget,
    stopped it (the finds depend on the machine's speed).
    """

    attack: str
    edit: int
    prompts: tuple[str, ...] = ()
    rows: StateRows | None = None
    guarded: bool = False
