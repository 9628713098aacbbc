"""Continuous rows of a closed-form edit: text states that no typed prompt produces, each
column mapped to a target state.

Robust erase (``edit.robust``) adds what its attacks found in the text encoder's space as such
rows beside its text rows: a soft prompt's encoded states (mapped to the edit target's states,
aligned as the text rows align) and a concept-free prompt's states plus the concept vector
(mapped to the same prompt's own states: the direction must not move the output).  A delta
solved with them stores them in its own file (tensors under :data:`PREFIX`), so that
``audit --reproduce`` solves the same system again without repeating the attacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import EditError

#: the tensor-name prefix of state rows in a delta file (no module path starts with it)
PREFIX = "locopack_state_rows."


@dataclass(frozen=True)
class StateRows:
    """Row sets of states as the sites receive encoded text: ``originals[k, i]`` is a column
    of X and ``targets[k, j]`` its column of Y, for each ``(k, i, j)`` in ``pairs``.

    ``originals`` and ``targets`` are (n, L, D) float32 tensors of one shape.
    """

    originals: torch.Tensor
    targets: torch.Tensor
    pairs: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        shape = tuple(self.originals.shape)
        if len(shape) != 3 or tuple(self.targets.shape) != shape:
            raise EditError(
                f"state rows need originals and targets of one (n, L, D) shape, got {shape} "
                f"and {tuple(self.targets.shape)}"
            )
        n, length = shape[:2]
        bad = [(k, i, j) for k, i, j in self.pairs if not (k < n and max(i, j) < length)]
        bad += [pair for pair in self.pairs if min(pair) < 0]
        if bad:
            raise EditError(f"state row pair {bad[0]} lies outside the {n} x {length} states")

    @property
    def columns(self) -> int:
        """How many columns the rows add to X and Y."""
        return len(self.pairs)

    def __add__(self, other: StateRows) -> StateRows:
        """Both row sets, ``other``'s after this one's."""
        n = self.originals.shape[0]
        return StateRows(
            torch.cat([self.originals, other.originals]),
            torch.cat([self.targets, other.targets]),
            self.pairs + tuple((k + n, i, j) for k, i, j in other.pairs),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The rows as named tensors of a delta file."""
        return {
            PREFIX + "originals": self.originals.detach().to(torch.float32).cpu(),
            PREFIX + "targets": self.targets.detach().to(torch.float32).cpu(),
            PREFIX + "pairs": torch.tensor(self.pairs, dtype=torch.int64).reshape(-1, 3),
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], where: str) -> StateRows | None:
        """The rows stored in ``tensors`` (popped from it); None where it holds none.

        Raises:
            EditError: some of the rows' tensors are missing or malformed (naming ``where``).
        """
        names = ("originals", "targets", "pairs")
        found = {name: tensors.pop(PREFIX + name, None) for name in names}
        if all(value is None for value in found.values()):
            return None
        pairs = found["pairs"]
        if any(value is None for value in found.values()) or pairs.ndim != 2 or pairs.shape[1] != 3:
            raise EditError(
                f"{where}: its state rows are incomplete (expected {PREFIX}originals, targets "
                "and an (n, 3) pairs tensor); re-create the file with `locopack edit`"
            )
        try:
            return cls(
                found["originals"].float(),
                found["targets"].float(),
                tuple(tuple(int(v) for v in row) for row in pairs.tolist()),
            )
        except EditError as err:
            raise EditError(f"{where}: {err}") from None
