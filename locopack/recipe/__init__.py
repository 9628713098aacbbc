"""Reading and checking recipes: the schema, the YAML limits, located errors, the review of a
recipe against its base model, and the prompt files a recipe names.

The schema's names are imported here (it needs only pydantic and yaml); the checks against a
model are re-exported lazily, so that reading one submodule (say the prompt files, which the
editor needs) does not import the model side with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import RecipeError
from .schema import (
    AttackSettings,
    BaseModelSpec,
    CardSettings,
    DetectorSpec,
    EditSettings,
    EraseEdit,
    EvidenceSettings,
    ExportSettings,
    HubSettings,
    LocalizeSettings,
    PromptSample,
    Recipe,
    RobustSettings,
    UpdateEdit,
    load_recipe,
    parse_recipe,
)

if TYPE_CHECKING:
    from .checks import preflight
    from .review import check_against_model, resolve_layers, summarize

_LAZY = {
    "preflight": "checks",
    "check_against_model": "review",
    "resolve_layers": "review",
    "summarize": "review",
}

__all__ = [
    "AttackSettings",
    "BaseModelSpec",
    "CardSettings",
    "DetectorSpec",
    "EditSettings",
    "EraseEdit",
    "EvidenceSettings",
    "ExportSettings",
    "HubSettings",
    "LocalizeSettings",
    "PromptSample",
    "Recipe",
    "RecipeError",
    "RobustSettings",
    "UpdateEdit",
    "check_against_model",
    "load_recipe",
    "parse_recipe",
    "preflight",
    "resolve_layers",
    "summarize",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'locopack.recipe' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
