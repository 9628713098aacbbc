"""What an attack found: the prompts (and, where it has them, the states) that bring an erased
concept back on a model.  Robust erase (``edit.robust``) adds them as rows of its next solve."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Found:
    """An attack's finds for one erase edit (``edit``: its index among the recipe's edits).

    ``prompts``: text that brought the concept back (best first).  ``states``: optional
    continuous finds, (n, L, D) as the sites receive encoded prompts (``EditStates.originals``
    of :mod:`locopack.edit.editor`), with ``positions[k]`` the positions of row set k that
    carry the concept; only for families whose sites all read one encoded text (cross-attention).
    ``guarded``: a time guard, not the attack's budget, stopped it (the finds depend on the
    machine's speed).
    """

    attack: str
    edit: int
    prompts: tuple[str, ...] = ()
    states: torch.Tensor | None = None
    positions: tuple[tuple[int, ...], ...] = field(default_factory=tuple)
    guarded: bool = False
