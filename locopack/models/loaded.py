"""A loaded base model: the pipeline, its family, where it came from and its fingerprint,
travelling together as one object across the packages.

:func:`load_base_model` is the one loader: it loads a pipeline folder or a Hub id (at the
commit its revision names now, recorded so that a release names what was loaded, not a branch
that can move), sets the family up and refuses a base with a non-finite weight
(:func:`check_finite`).  A pipeline already in memory becomes a base through
:meth:`LoadedBase.of`.  What a release adds (a merged release base still holding its files,
verified signatures) is checked on the pipeline side, which then calls the loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ModelLayoutError
from ..filenames import PIPELINE_INDEX
from ..hub_ref import is_hub_id
from . import loading
from .registry import detect_family

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline

    from .base import ModelFamily, Site

_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class LoadedBase:
    """A loaded base pipeline and what identifies it.

    Attributes:
        pipe: the diffusers pipeline.
        family: its :class:`~locopack.models.ModelFamily` (as the recipe set it up).
        source: what was loaded: a local folder or a Hub repo id ("" for a pipeline built in
            memory).
        revision: the revision asked for (a Hub branch, tag or commit), if any.
        commit: the Hub commit that was loaded (None for a local folder).
        hub_id: the Hub repo the base came from, also when ``source`` is its downloaded copy
            (a locopack release on the Hub, whose ``merged/`` was fetched).
    """

    pipe: DiffusionPipeline
    family: type[ModelFamily]
    source: str = ""
    revision: str | None = None
    commit: str | None = None
    hub_id: str | None = None

    @classmethod
    def of(cls, pipe: DiffusionPipeline, family: type[ModelFamily] | None = None) -> LoadedBase:
        """A pipeline already in memory as a base (its family detected unless given)."""
        return cls(pipe, family or detect_family(pipe))

    @cached_property
    def fingerprint(self) -> str:
        """The base's fingerprint (computed once)."""
        from ..fingerprint import model_fingerprint

        return model_fingerprint(self.pipe, self.family)

    @property
    def denoiser(self) -> torch.nn.Module:
        """The pipeline's UNet or transformer."""
        return getattr(self.pipe, self.family.denoiser_attr)

    @property
    def sites(self) -> list[Site]:
        """The denoiser's text-conditioning sites, in execution order."""
        return self.family.sites(self.denoiser)

    @property
    def site_paths(self) -> list[str]:
        """Module paths of the denoiser's text-conditioning sites, in execution order."""
        return [site.path for site in self.sites]


def load_base_model(
    source: str,
    revision: str | None = None,
    dtype: str = "float32",
    variant: str | None = None,
    *,
    allow_pickle: bool = False,
    hub_id: str | None = None,
    t5_length: int | None = None,
) -> LoadedBase:
    """Load the pipeline ``source`` (a folder or a Hub id, at the commit ``revision`` names
    now) as a checked :class:`LoadedBase`.

    Args:
        hub_id: the Hub repo ``source`` was downloaded from, when it is a local copy.
        t5_length: T5 tokens per prompt, for families whose T5 length is settable.

    Raises:
        ModelLayoutError: the base cannot be loaded, its family takes no T5 length, or a
            weight is not finite.
    """
    if Path(source).is_dir():  # a local folder, or a Hub release's downloaded merged/
        commit, load_at = (snapshot_commit(Path(source)) if hub_id else None), None
    else:
        commit = resolved_commit(source, revision)
        load_at = commit or revision
    pipe, family = loading.load_pipeline(source, load_at, dtype, variant, allow_pickle=allow_pickle)
    if t5_length is not None:
        family = family.with_t5_length(t5_length)
    loaded = LoadedBase(pipe, family, source, revision, commit, hub_id)
    check_finite(loaded)
    return loaded


def check_finite(base: LoadedBase) -> None:
    """Refuse a base with a NaN or Inf weight in its denoiser or text encoders.

    Raises:
        ModelLayoutError: naming the component folder and the tensor.
    """
    import torch

    for attr in (base.family.denoiser_attr, "text_encoder", "text_encoder_2", "text_encoder_3"):
        module = getattr(base.pipe, attr, None)
        for name, tensor in module.state_dict().items() if module is not None else ():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ModelLayoutError(
                    f"{base.source}/{attr}: the weight {name} holds NaN or Inf values; the "
                    "model's files are damaged: re-download or re-create them"
                )


def resolved_commit(repo: str, revision: str | None) -> str | None:
    """The commit of the Hub repo ``repo`` that ``revision`` names now (from the local Hub
    cache when offline); None where it cannot be told."""
    if not is_hub_id(repo):
        return None
    if revision and _COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo, PIPELINE_INDEX, revision=revision))
    except Exception:  # unreachable and not cached: the loader reports it
        return None
    return snapshot_commit(path.parent)


def snapshot_commit(folder: Path) -> str | None:
    """The commit of a folder inside the Hub cache (``.../snapshots/<commit>/...``)."""
    parts = folder.resolve().parts
    if "snapshots" in parts[:-1]:
        commit = parts[parts.index("snapshots") + 1]
        return commit if _COMMIT.fullmatch(commit) else None
    return None
