"""Reading and checking recipes: the schema, the YAML limits, located errors, the review of a
recipe against its base model, and the prompt files a recipe names.

The public names below are re-exported lazily, so that reading one submodule (say the prompt
files, which the editor needs) does not import the model-side checks with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "RecipeError": "locopack.errors",
    "preflight": "locopack.recipe.checks",
    "check_against_model": "locopack.recipe.review",
    "resolve_layers": "locopack.recipe.review",
    "summarize": "locopack.recipe.review",
    **{
        name: "locopack.recipe.schema"
        for name in (
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
            "RobustSettings",
            "UpdateEdit",
            "load_recipe",
            "parse_recipe",
        )
    },
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

if TYPE_CHECKING:
    from ..errors import RecipeError
    from .checks import preflight
    from .review import check_against_model, resolve_layers, summarize
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


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'locopack.recipe' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
