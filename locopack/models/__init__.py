"""Model families: where text enters each denoiser, in which order, and tiny test twins."""

from .base import ModelFamily, Site
from .loaded import LoadedBase, load_base_model
from .loading import load_denoiser_layout, load_pipeline, model_layout
from .registry import FAMILIES, detect_family, family_for, get_family

__all__ = [
    "FAMILIES",
    "LoadedBase",
    "ModelFamily",
    "Site",
    "detect_family",
    "family_for",
    "get_family",
    "load_base_model",
    "load_denoiser_layout",
    "load_pipeline",
    "model_layout",
]
