"""The base model of a recipe, loaded: the pipeline, its family, where it came from, and its
fingerprint, travelling together.

Where the base came from is recorded so that a release can be checked anywhere without
naming the build machine's folders: a Hub base by its repo id and the commit that was loaded
(not the branch the recipe asked for, which can move); a local base by its path relative to
the release folder, which the audit resolves again from wherever the release then lies.

A loaded base is checked before any work is done with it: every weight of its denoiser and
text encoders must be finite (:func:`check_finite`), and a base that is a locopack release's
merged checkpoint must still hold the files that release recorded (:func:`changed_file`;
a first release of a plain model has no such record to check).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLayoutError
from ..hub.apply import pipeline_source
from ..hub_ref import is_hub_id
from ..release.layout import MERGED_DIR, PIPELINE_INDEX, relative_location, sha256_file

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily
    from ..recipe.schema import Recipe
    from ..release.records.history import HistoryEntry

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
        hub_id: the Hub repo the base came from, also when ``source`` is its downloaded copy
            (a locopack release on the Hub, whose ``merged/`` was fetched).
    """

    pipe: DiffusionPipeline
    family: type[ModelFamily]
    source: str
    revision: str | None = None
    commit: str | None = None
    hub_id: str | None = None

    @cached_property
    def fingerprint(self) -> str:
        """The base's fingerprint (computed once)."""
        from ..fingerprint import model_fingerprint

        return model_fingerprint(self.pipe, self.family)

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
        """True when the base is a folder of this machine (not a Hub repo or its copy)."""
        return self.hub_id is None and Path(self.source).is_dir()

    def location(self, folder: Path) -> str | None:
        """Where the base is, as a release in ``folder`` records it: a local base's path
        relative to ``folder`` (posix; None where that path would name this machine's
        folders), or the Hub repo id."""
        return self.hub_id or relative_location(self.source, Path(folder))


def load_base(recipe: Recipe, *, allow_pickle: bool = False) -> LoadedBase:
    """Load the recipe's base pipeline: a local path resolved against the recipe's folder,
    a Hub id at the commit its revision names now, or a locopack release's merged checkpoint.

    Raises:
        ModelLayoutError: the base cannot be loaded; HubError: a Hub base cannot be resolved.
        SignatureError: ``base.public_key`` is set and the base does not verify against it.
    """
    from ..models import load_pipeline

    base = recipe.base
    ref = recipe.local_path(base.model)
    if base.public_key:  # before anything of the base is loaded
        from ..release.signing import TrustedKeys
        from ..release.verify import verified_release

        pinned = f"{ref}@{base.revision}" if base.revision and not Path(ref).exists() else ref
        trusted = TrustedKeys(public_keys=(Path(recipe.local_path(base.public_key)),))
        verified_release(pinned, trusted)
    source, revision = pipeline_source(ref, base.revision)
    hub_id = ref if is_hub_id(ref) and not Path(ref).exists() else None
    if Path(source).is_dir():  # a local folder, or a Hub release's downloaded merged/
        commit, load_at = (_snapshot_commit(Path(source)) if hub_id else None), None
    else:
        commit = resolved_commit(source, revision)
        load_at = commit or revision
    pipe, family = load_pipeline(
        source, load_at, base.dtype, base.variant, allow_pickle=allow_pickle
    )
    loaded = LoadedBase(pipe, recipe_family(family, recipe), source, base.revision, commit, hub_id)
    check_finite(loaded)
    return loaded


@dataclass(frozen=True)
class BaseLayout:
    """A recipe's base as its configs describe it, without its weights.

    Attributes:
        family: its family, as the recipe sets it up.
        site_count: its text-conditioning sites.
        scheduler: its scheduler built from its config (None: none listed).
        missing: why its weights cannot be read without a download; None when they are here.
    """

    family: type[ModelFamily]
    site_count: int
    scheduler: Any
    missing: str | None


def base_layout(recipe: Recipe) -> BaseLayout:
    """The recipe's base from its configs alone (nothing but configs is downloaded).

    Raises:
        ModelLayoutError, OfflineError: the configs cannot be read.
    """
    from ..models import load_denoiser_layout
    from ..models.loading import load_scheduler, weights_missing

    ref = recipe.local_path(recipe.base.model)
    source, revision = ref, recipe.base.revision
    if Path(ref).exists():  # a local pipeline, or a local release's merged/
        source, revision = pipeline_source(ref, revision)
    family, denoiser = load_denoiser_layout(source, revision)
    return BaseLayout(
        recipe_family(family, recipe),
        len(family.sites(denoiser)),
        load_scheduler(source, revision),
        weights_missing(source, revision, family.denoiser_attr),
    )


def recipe_family(family: type[ModelFamily], recipe: Recipe) -> Any:
    """``family`` as the recipe sets it up (its T5 length, where the recipe names one)."""
    length = recipe.base.max_sequence_length
    return family if length is None else family.with_t5_length(length)


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


def changed_file(folder: Path, entry: HistoryEntry) -> str | None:
    """What differs between the pipeline ``folder`` and the merged checkpoint that the history
    ``entry`` of its release recorded (the first file missing or with another sha256); None
    when nothing does or the entry records no merged checkpoint."""
    prefix = f"{MERGED_DIR}/"
    recorded = entry.files
    for name, digest in sorted(recorded.items()):
        path = Path(folder) / name.removeprefix(prefix)
        if not name.startswith(prefix):
            continue
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != digest:
            return f"{path}: its sha256 differs from the record"
    return None


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
    return _snapshot_commit(path.parent)


def _snapshot_commit(folder: Path) -> str | None:
    """The commit of a folder inside the Hub cache (``.../snapshots/<commit>/...``)."""
    parts = folder.resolve().parts
    if "snapshots" in parts[:-1]:
        commit = parts[parts.index("snapshots") + 1]
        return commit if _COMMIT.fullmatch(commit) else None
    return None
