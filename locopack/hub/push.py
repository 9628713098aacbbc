"""Push release folders to the Hugging Face Hub (``locopack push``; pulling is :mod:`.pull`,
and :func:`resolve_release` is re-exported here).

A push uploads only a release that passes ``audit`` (without ``--reproduce``): a file edited
or added after the build, or a symbolic link, stops it before anything is sent, and there is no
override.  What goes up is then exactly the files the history records, plus the history.

A push is one commit: the whole release folder goes up through ``HfApi.create_commit`` with every
file as one operation.  ``HfApi.upload_folder`` is not used on purpose: with ``hf_xet``
installed it streams large folders in several commits, and a half-pushed release must never be
visible.  The Hub applies a commit atomically, so a failed push leaves no partial commit.

The branch mirrors the folder: files on the branch that the folder no longer has are deleted in
the same commit (``.gitattributes`` is kept), so the tag names exactly the release and nothing
left over from an earlier version.  Hidden files and the localization ``cache/`` stay local.

Each commit is tagged ``<recipe name>-<recipe sha256[:12]>``.  Pushing the same release again is
a no-op that returns the existing tag; a tag that already names *other* files is an error, never
moved.

The token comes from huggingface_hub's usual places (``HF_TOKEN``, ``hf auth login``).  locopack
never writes or prints it, and scrubs it from any error text it passes on.  Transient failures
(HTTP 5xx/408/429, resets, timeouts) are retried with a short exponential back-off.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from ..errors import HubError, LocopackError
from ..hub_ref import parse_ref
from ..release.layout import EVIDENCE_FILE, HISTORY_FILE, RECIPE_FILE, release_files
from ..release.records.evidence import EvidenceRecord
from ..secret_scan import check_folder
from .calls import with_retries
from .pull import resolve_release

if TYPE_CHECKING:
    from huggingface_hub import HfApi

    from ..recipe.schema import Recipe

T = TypeVar("T")

KEEP_REMOTE = frozenset({".gitattributes"})


@dataclass(frozen=True)
class PushResult:
    """Where a push went: the repo URL, the commit and the tag that name the release."""

    url: str
    commit: str
    tag: str
    created: bool = True  # False: the same release was already on the Hub under this tag


def push(
    folder: str | Path,
    repo: str,
    *,
    private: bool = True,
    branch: str | None = None,
    tag: str | None = None,
    message: str | None = None,
    token: str | None = None,
    retries: int = 3,
    sleep: Callable[[float], None] = time.sleep,
    allow_unmet: bool = False,
    recipe: Recipe | None = None,
) -> PushResult:
    """Upload the release in ``folder`` to the model repo ``repo`` as one tagged commit.

    Args:
        folder: a release folder; its ``recipe.yaml`` names the commit and the default tag.
        repo: ``ORG/NAME``; created (private unless ``private=False``) if missing.
        branch: branch to commit to (created from ``main`` if missing) [default: main].
        tag: tag for the commit [default: ``<recipe name>-<recipe sha256[:12]>``].
        message: extra text for the commit title, after ``locopack <name> <hash>``.
        token: Hub token [default: ``HF_TOKEN`` or the stored login].
        retries: retries of each Hub call on transient failures; ``sleep`` waits between them.
        allow_unmet: upload a release that misses its recipe's requirements; it must have been
            built with ``--allow-unmet`` (so that its card and history say so), and the commit
            message says so too.
        recipe: the release's recipe where the caller has read it already (used where it is
            the one ``recipe.yaml`` holds); otherwise it is read here, once.

    Returns:
        :class:`PushResult` with the repo URL, the commit id and the tag.

    Raises:
        HubError: no recipe.yaml, a release that fails the audit or misses its requirements
            (without ``allow_unmet``), authentication failure, a
            tag that names other files, or any other Hub failure (one line; the token never
            appears in it).
        RecipeError: the folder's recipe.yaml is invalid.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_token

    folder = Path(folder)
    recipe = _release_recipe(folder, recipe)
    default_tag, title, body = _describe_release(recipe, message)
    parse_ref(repo)
    _check_audit(folder, recipe)
    body += _requirements_note(folder, allow_unmet)
    files = release_files(folder)
    check_folder(folder, files)  # nothing secret goes up, whoever wrote the files
    tag = _check_tag(tag or default_tag)
    token = token or get_token()
    api = HfApi(token=token)

    def call(step: str, fn: Callable[[], T]) -> T:
        return with_retries(fn, step, repo, retries=retries, sleep=sleep, token=token)

    url = str(
        call("create the repo", lambda: api.create_repo(repo, private=private, exist_ok=True))
    )
    if branch and branch != "main":
        call("create the branch", lambda: api.create_branch(repo, branch=branch, exist_ok=True))
    tags = {
        t.name: t.target_commit for t in call("read refs", lambda: api.list_repo_refs(repo).tags)
    }
    if tag in tags:
        if call("compare the tag", lambda: _same_files(api, repo, tags[tag], folder, files)):
            return PushResult(url, tags[tag], tag, created=False)
        raise HubError(
            f"tag {tag!r} already names commit {tags[tag][:12]} of {repo}, with other files; "
            "pass --tag to name this release differently (tags are never moved)"
        )
    revision = branch or "main"
    head = call("read the branch", lambda: api.model_info(repo, revision=revision).sha)
    if head and call("compare the branch", lambda: _same_files(api, repo, head, folder, files)):
        commit = head  # already uploaded by a push whose tag step failed: only tag it
    else:
        commit = call(
            "commit", lambda: _commit(api, repo, folder, files, revision, title, body)
        ).oid
    try:
        call("tag", lambda: _tag(api, repo, tag, commit, title))
    except HubError as err:
        raise type(err)(
            f"{err}; the files are committed as {commit[:12]} but not tagged: push again to tag "
            "that commit"
        ) from None
    return PushResult(url, commit, tag)


def _check_audit(folder: Path, recipe: Recipe) -> None:
    """Refuse a release that fails the audit, before anything is sent."""
    from ..release.audit import audit_folder

    report = audit_folder(folder, recipe=recipe)
    if not report.ok:
        failed = next(c for c in report.checks if not c.ok)
        raise HubError(
            f"{folder}: not pushed, the release fails its audit ({failed.name}: {failed.detail});"
            " run `locopack audit` on it, then rebuild it or undo the change"
        )


def _requirements_note(folder: Path, allow_unmet: bool) -> str:
    """What the commit message says about the requirements; refuses a release that misses
    them unless it was built, and is pushed, with ``--allow-unmet``."""
    from ..release.history import read_history

    try:
        section = EvidenceRecord.read(folder / EVIDENCE_FILE).requirements
    except LocopackError:
        section = None
    if section is None:
        return "requirements: not recorded (a release made before requirements)\n"
    if section["met"]:
        return "requirements: met\n"
    misses = "; ".join(section["unmet"])
    entries = read_history(folder / HISTORY_FILE)
    requirements = entries[-1].requirements if entries else None
    built_allowing = requirements is not None and requirements.allowed_unmet
    if not allow_unmet:
        raise HubError(
            f"{folder}: not pushed, the release does not meet its requirements ({misses}); "
            "to publish it anyway, build it with --allow-unmet and push with --allow-unmet"
        )
    if not built_allowing:
        raise HubError(
            f"{folder}: not pushed, the release misses its requirements ({misses}) and its card "
            "does not say it was released anyway: rebuild it with --allow-unmet first"
        )
    return f"requirements: NOT met, published with --allow-unmet: {misses}\n"


def _check_tag(tag: str) -> str:
    """``tag`` if git accepts it as a tag name (checked before anything is uploaded)."""
    bad = re.search(r"[\s~^:?*\[\\]|\.\.|@\{|//", tag) or tag.startswith(("-", "/", "."))
    if bad or not tag or tag.endswith(("/", ".", ".lock")):
        raise HubError(f"{tag!r} is not a valid tag name (no spaces, '..', ':', '~', '^' ...)")
    return tag


def _release_recipe(folder: Path, known: Recipe | None) -> Recipe:
    """The recipe of the release in ``folder`` (``known`` where it is the one it holds).

    Raises:
        HubError: no such folder, or no recipe.yaml in it.
    """
    from ..release.layout import release_recipe

    if not folder.is_dir():
        raise HubError(f"{folder}: no such folder")
    if not (folder / RECIPE_FILE).is_file():
        raise HubError(
            f"{folder}: no recipe.yaml; a release folder carries the recipe it was made from "
            "(written by `locopack edit`)"
        )
    return release_recipe(folder, known)


def _describe_release(recipe: Recipe, message: str | None) -> tuple[str, str, str]:
    """(default tag, commit title, commit description) from the release's recipe."""
    from ..version import __version__

    short = recipe.sha256[:12]
    title = f"locopack {recipe.name} {short}" + (f": {message}" if message else "")
    body = f"recipe: {recipe.name}\nrecipe sha256: {recipe.sha256}\nlocopack {__version__}\n"
    return f"{recipe.name}-{short}", title, body


def _commit(api: HfApi, repo: str, folder: Path, files: list[str], revision: str, title, body):
    """One commit that makes ``revision`` hold exactly ``files`` (plus ``.gitattributes``)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    info = api.model_info(repo, revision=revision)
    keep = set(files) | KEEP_REMOTE
    ops: list[CommitOperationAdd | CommitOperationDelete]
    ops = [CommitOperationAdd(f, str(folder / f)) for f in files]
    ops += [
        CommitOperationDelete(s.rfilename) for s in info.siblings or [] if s.rfilename not in keep
    ]
    parent = info.sha if info.sha and re.fullmatch(r"[0-9a-f]{40}", info.sha) else None
    return api.create_commit(
        repo,
        ops,
        commit_message=title,
        commit_description=body,
        revision=revision,
        parent_commit=parent,
    )


def _tag(api: HfApi, repo: str, tag: str, commit: str, message: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(repo, tag=tag, revision=commit, tag_message=message)
    except HfHubHTTPError as err:
        if err.response is None or err.response.status_code != 409:
            raise
        # made by a retried request whose answer was lost, or by someone else meanwhile
        target = {t.name: t.target_commit for t in api.list_repo_refs(repo).tags}.get(tag)
        if target != commit:
            raise HubError(
                f"tag {tag!r} was created for another commit of {repo} meanwhile"
            ) from None


def _same_files(api: HfApi, repo: str, commit: str, folder: Path, files: list[str]) -> bool:
    """Whether ``commit`` holds exactly ``files`` with the local contents."""
    from huggingface_hub.hf_api import RepoFile

    tree = api.list_repo_tree(repo, revision=commit, recursive=True)
    remote = {f.path: f for f in tree if isinstance(f, RepoFile) and f.path not in KEEP_REMOTE}
    if set(remote) != set(files):
        return False
    for name in files:
        data = (folder / name).read_bytes()
        entry = remote[name]
        if entry.lfs is not None:
            same = hashlib.sha256(data).hexdigest() == entry.lfs.sha256
        else:
            same = _git_oid(data) == entry.blob_id
        if not same:
            return False
    return True


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


__all__ = ["KEEP_REMOTE", "PushResult", "push", "resolve_release"]
