"""The base model of a recipe, loaded: the pipeline, its family, where it came from, and its
fingerprint, travelling together.

Where the base came from is recorded so that a release can be checked anywhere without
naming the build machine's folders: a Hub base by its repo id and the commit that was loaded
(not the branch the recipe asked for, which can move); a local base by its path relative to
the release folder, which the audit resolves again from wherever the release then lies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..hub_ref import is_hub_id
from .inference import pipeline_source
from .layout import PIPELINE_INDEX, relative_location

_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class LoadedBase:
    """A loaded base pipeline and what identifies it.

    Attributes:
        pipe: the diffusers pipeline.
        family: its :class:`~locopack.models.ModelFamily`.
        source: what was loaded: a local folder or a Hub repo id.
        revision: the revision asked for (a Hub branch, tag or commit), if any.
        commit: the Hub commit that was loaded (None for a local folder).
    """

    pipe: Any
    family: Any
    source: str
    revision: str | None = None
    commit: str | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    @cached_property
    def fingerprint(self) -> str:
        """The base's fingerprint (computed once)."""
        from ..fingerprint import model_fingerprint

        return self._fingerprint or model_fingerprint(self.pipe, self.family)

    @property
    def denoiser(self) -> Any:
        """The pipeline's UNet or transformer."""
        return getattr(self.pipe, self.family.denoiser_attr)

    @property
    def site_paths(self) -> list[str]:
        """Module paths of the denoiser's text-conditioning sites, in execution order."""
        return [site.path for site in self.family.sites(self.denoiser)]

    @property
    def is_local(self) -> bool:
        """True when the base was loaded from a folder on this machine."""
        return Path(self.source).is_dir()

    def location(self, folder: Path) -> str | None:
        """Where the base is, as a release in ``folder`` records it: a local base's path
        relative to ``folder`` (posix; None where that path would name this machine's
        folders), or the Hub repo id."""
        return relative_location(self.source, Path(folder))


def load_base(recipe: Any, *, allow_pickle: bool = False) -> LoadedBase:
    """Load the recipe's base pipeline: a local path resolved against the recipe's folder,
    a Hub id at the commit its revision names now, or a locopack release's merged checkpoint.

    Raises:
        ModelLayoutError: the base cannot be loaded; HubError: a Hub base cannot be resolved.
    """
    from ..models import load_pipeline

    base = recipe.base
    source, revision = pipeline_source(recipe.local_path(base.model), base.revision)
    commit = None if Path(source).is_dir() else resolved_commit(source, revision)
    pipe, family = load_pipeline(
        source, commit or revision, base.dtype, base.variant, allow_pickle=allow_pickle
    )
    return LoadedBase(pipe, family, source, revision, commit)


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
    commit = path.parent.name  # the Hub cache keeps each file under snapshots/<commit>/
    return commit if _COMMIT.fullmatch(commit) else None
