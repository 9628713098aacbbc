"""The interface every attack implements, and what a run of one returns."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, TypedDict

from .context import AttackContext
from .found import Found

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ...recipe.schema import Recipe


class Skipped(TypedDict):
    """An erase edit an attack could not attack, and why."""

    edit: int
    label: str
    why: str


@dataclass
class AttackRun:
    """What one attack found on a recipe.

    Attributes:
        rows: lines of the card's table (:func:`~locopack.evidence.attacks.context.row`).
        found: one :class:`Found` per erase edit attacked (the edited model's finds).
        skipped: each erase edit it could not attack (:class:`Skipped`).
        record: the attack's own record for ``evidence.json`` (the word search keeps its
            ``attack`` section), or None.
    """

    rows: list[dict[str, object]] = field(default_factory=list)
    found: list[Found] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    record: dict[str, object] | None = None


class Attack(ABC):
    """An attack on erase edits, run on the base and on the edited model."""

    #: registry key and the recipe's field for it, e.g. ``"concept_vector"``
    name: ClassVar[str]
    #: how the card names it
    pretty_name: ClassVar[str]
    #: the method it follows
    reference_url: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def settings(cls, recipe: Recipe) -> BaseModel | None:
        """Its budget in ``recipe``, or None where the recipe turns it off."""

    @classmethod
    @abstractmethod
    def budget(cls, settings: BaseModel) -> str:
        """The budget in words, for the card."""

    @classmethod
    @abstractmethod
    def run(cls, ctx: AttackContext, settings: BaseModel) -> AttackRun:
        """Attack every erase edit of ``ctx.recipe``."""
