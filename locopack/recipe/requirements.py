"""What an edit must achieve before its release may ship: the ``requirements`` of each edit.

Every edit of a recipe carries requirements, stated or by default for its kind, judged from the
evidence by the recipe's detector (:mod:`locopack.evidence.verdict`):

=====================  ====================================================  =======  ========
name                   measured                                              erase    update
=====================  ====================================================  =======  ========
``concept_left``       the concept (erase) or the old fact (update) still    0.10     0.10
                       seen on the edited and the held-out prompts, at most
``target_shown``       the new fact shown on the edited prompts, at least    --       0.90
``prompt_kept``        on preserve and unrelated prompts, what the prompt    10       10
                       asks still shown within this many points of the base
``ssim``               mean SSIM of preserve and unrelated images, before    0.60     0.60
                       vs after (same seed), at least
``attack_success``     the worst of the evidence's attacks on the edited     --       --
                       model: images with the concept, at most
=====================  ====================================================  =======  ========

Rates are fractions (0.10 is 10%); ``prompt_kept`` is in percentage points.  ``false`` turns a
requirement off.  ``attack_success`` is required only when stated: the default attack budgets
are small (their figures move with the budgets), so a bar on it must come with the budgets the
recipe chooses.  It is judged on the worst attack (:func:`locopack.evidence.attacks.worst`): the
row of the card's attack table with the highest success on the edited model, the soft prompt's
white-box embeddings included.  ``detector`` names the detector that judges (default: the
recipe's first rate detector); a recipe with no rate detector (CLIP alone) is judged on SSIM
only, and the card says which requirements could not be judged.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, PlainValidator
from pydantic_core import PydanticCustomError


def _threshold(high: float):
    """A threshold from 0 to ``high``, or ``false`` (off); ints are taken as numbers."""

    def check(value: object) -> float | bool | None:
        if value is None or value is False:
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= high:
            return float(value)
        raise PydanticCustomError(
            "recipe",
            "expected a number from 0 to {high}, or false to turn it off",
            {"high": high},
        )

    return PlainValidator(check)


Rate = Annotated[float | bool | None, _threshold(1)]
Points = Annotated[float | bool | None, _threshold(100)]

#: every requirement's default by edit kind (None: not required unless stated)
DEFAULTS: dict[str, dict[str, float | None]] = {
    "erase": {
        "concept_left": 0.10,
        "target_shown": None,
        "prompt_kept": 10.0,
        "ssim": 0.60,
        "attack_success": None,
    },
    "update": {
        "concept_left": 0.10,
        "target_shown": 0.90,
        "prompt_kept": 10.0,
        "ssim": 0.60,
        "attack_success": None,
    },
}


class Requirements(BaseModel):
    """An edit's requirements; None takes the kind's default, ``false`` turns one off."""

    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    detector: str | None = None
    concept_left: Rate = None
    target_shown: Rate = None
    prompt_kept: Points = None
    ssim: Rate = None
    attack_success: Rate = None

    def thresholds(self, kind: str) -> dict[str, float]:
        """{name: threshold} of every requirement in force for an edit of ``kind``."""
        out = {}
        for name, default in DEFAULTS[kind].items():
            value = getattr(self, name)
            value = default if value is None else value
            if value is not False and value is not None:
                out[name] = float(value)
        return out

    def stated(self) -> set[str]:
        """The names the recipe sets explicitly (to a threshold, not ``false``)."""
        return {n for n in DEFAULTS["update"] if getattr(self, n) not in (None, False)}
