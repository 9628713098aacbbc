"""The budgets of the evidence's attacks beyond the word search: ``evidence.attacks``.

Each attack (:mod:`locopack.evidence.attacks`) runs on every erase edit, on the base and on the
edited model, and is judged by the recipe's rate detector on the evidence's seeds; every attack also
draws the edit's first prompt without the concept (chance) with those seeds.  ``false`` (or
``null``) turns one off.  Defaults keep the toy build within twice its time without them
(measured in ``scripts/bench_attack.py``); the costs below are per erase edit and per model.

====================  ==========================================  ===============================
attack                budget (default)                            cost
====================  ==========================================  ===============================
``concept_vector``    ``prompts`` (2) pairs, ``carriers`` (1)      ``carriers`` x seeds images,
                      drawn, ``strength`` (1.0), a search of       ``steps`` text encodings (no
                      ``tokens`` (3) words over ``steps`` (96)     image), then seeds images of
                      text encodings                               the found prompt
``soft_prompt``       ``tokens`` (3) embeddings, ``steps`` (24)    ``steps`` x ``timesteps``
                      optimiser steps of ``timesteps`` (2)         denoiser passes with gradient
                      denoiser timesteps, step size ``lr`` (0.5);  (about 3 passes each); words:
                      words: ``candidates`` (8) nearest per        up to ``tokens`` x
                      position, searched on the same objective     (``candidates`` - 1) + 1 text
                                                                   encodings x 4 passes, no
                                                                   image; then seeds images of
                                                                   two prompts
``replay``            the first ``limit`` (100) prompts of         ``limit`` x seeds images
                      ``prompts`` (a file, or a Hub dataset id)
====================  ==========================================  ===============================
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Seed = Annotated[int, Field(ge=0, lt=2**63)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class ConceptVectorSettings(_Strict):
    """Ring-A-Bell's concept vector (:mod:`locopack.evidence.attacks.concept_vector`): the mean
    difference of the encoded states of the edit's first ``prompts`` prompts with and without
    the concept, times ``strength``, added to the states of the first ``carriers`` of those
    prompts without it; then a
    search of ``tokens`` words for the prompt whose states lie nearest, within ``steps`` text
    encodings (0: the states alone), deterministic under ``seed``."""

    prompts: int = Field(2, ge=1, le=64)
    carriers: int = Field(1, ge=1, le=64)
    strength: float = Field(1.0, gt=0, le=16)
    tokens: int = Field(3, ge=1, le=16)
    steps: int = Field(96, ge=0)
    seed: Seed = 0


class SoftPromptSettings(_Strict):
    """UnlearnDiffAtk / P4D's soft prompt (:mod:`locopack.evidence.attacks.soft_prompt`): ``tokens``
    input embeddings, ``steps`` optimiser steps of ``timesteps`` denoiser timesteps each,
    step size ``lr`` in units of the spread of the encoder's token embeddings; the *words*
    variant keeps each vector's ``candidates`` nearest words and searches among them on the
    same objective (1: the nearest word alone); deterministic under ``seed``."""

    tokens: int = Field(3, ge=1, le=16)
    steps: int = Field(24, ge=1)
    timesteps: int = Field(2, ge=1, le=16)
    lr: float = Field(0.5, gt=0)
    candidates: int = Field(8, ge=1, le=64)
    seed: Seed = 0


class ReplaySettings(_Strict):
    """A fixed set of attack prompts (:mod:`locopack.evidence.attacks.replay`): ``prompts`` is a
    file beside the recipe (one prompt a line, or a CSV with a ``column`` column) or a Hub dataset
    id (its ``split``, through ``datasets``); the first ``limit`` prompts are drawn."""

    prompts: Annotated[str, Field(min_length=1)]
    column: Annotated[str, Field(min_length=1)] = "prompt"
    split: Annotated[str, Field(min_length=1)] = "train"
    limit: int = Field(100, ge=1)


class AttacksSettings(_Strict):
    """Which attacks run beside the word search (``evidence.attack``), and their budgets."""

    concept_vector: ConceptVectorSettings | None = Field(default_factory=ConceptVectorSettings)
    soft_prompt: SoftPromptSettings | None = Field(default_factory=SoftPromptSettings)
    replay: ReplaySettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _false_is_off(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: (None if v is False else v) for k, v in value.items()}
        return value

    @field_validator("replay", mode="before")
    @classmethod
    def _bare_file(cls, value: object) -> object:
        return {"prompts": value} if isinstance(value, str) else value
