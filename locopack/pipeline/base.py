"""The base model of a recipe, loaded for a build: where the recipe says it is, checked as a
release needs it, then loaded by :func:`locopack.models.load_base_model`.

Where the base came from is recorded so that a release can be checked anywhere without
naming the build machine's folders: a Hub base by its repo id and the commit that was loaded
(not the branch the recipe asked for, which can move); a local base by its path relative to
the release folder (:func:`locopack.release.layout.base_location`), which the audit resolves
again from wherever the release then lies.

A base whose recipe pins a public key must verify against it before anything of it is loaded,
and a base that is a locopack release's merged checkpoint must still hold the files that
release recorded (:func:`changed_file`; a first release of a plain model has no such record to
check).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..hub.apply import pipeline_source
from ..hub_ref import is_hub_id
from ..models.loaded import LoadedBase, load_base_model
from ..release.layout import MERGED_DIR, sha256_file

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

    from ..models.base import ModelFamily
    from ..recipe.schema import Recipe


def load_base(recipe: Recipe, *, allow_pickle: bool = False) -> LoadedBase:
    """Load the recipe's base pipeline: a local path resolved against the recipe's folder,
    a Hub id at the commit its revision names now, or a locopack release's merged checkpoint.

    Raises:
        ModelLayoutError: the base cannot be loaded; HubError: a Hub base cannot be resolved.
        SignatureError: ``base.public_key`` is set and the base does not verify against it.
    """
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
    return load_base_model(
        source,
        revision,
        base.dtype,
        base.variant,
        allow_pickle=allow_pickle,
        hub_id=hub_id,
        t5_length=base.max_sequence_length,
    )


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
    scheduler: SchedulerMixin | None
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


def recipe_family(family: type[ModelFamily], recipe: Recipe) -> type[ModelFamily]:
    """``family`` as the recipe sets it up (its T5 length, where the recipe names one)."""
    length = recipe.base.max_sequence_length
    return family if length is None else family.with_t5_length(length)


def changed_file(folder: Path, entry: dict[str, object]) -> str | None:
    """What differs between the pipeline ``folder`` and the merged checkpoint that the history
    ``entry`` of its release recorded (the first file missing or with another sha256); None
    when nothing does or the entry records no merged checkpoint."""
    prefix = f"{MERGED_DIR}/"
    recorded = entry.get("files") if isinstance(entry.get("files"), dict) else {}
    for name, digest in sorted(recorded.items()):
        path = Path(folder) / name.removeprefix(prefix)
        if not name.startswith(prefix):
            continue
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != digest:
            return f"{path}: its sha256 differs from the record"
    return None
