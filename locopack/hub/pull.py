"""Pull a release from the Hugging Face Hub: ``ORG/NAME[@REVISION]`` to a local snapshot
(``locopack.apply(pipe, "org/name@tag")``, ``audit``, ``generate``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..hub_ref import parse_ref
from .calls import with_retries


def resolve_release(
    ref: str,
    allow_patterns: list[str] | None = None,
    *,
    token: str | None = None,
    retries: int = 3,
    sleep: Callable[[float], None] = time.sleep,
) -> Path:
    """Download (or find in the local Hub cache) the release ``ORG/NAME[@REVISION]``.

    Args:
        ref: the release; the revision is a branch, tag or commit [default: main].
        allow_patterns: only files matching these glob patterns [default: all].

    Returns:
        The local snapshot folder.

    Raises:
        HubError: ``ref`` is malformed, names no repo or revision (or one the token cannot
            read), or the Hub cannot be reached and no cached copy exists.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import get_token

    repo, revision = parse_ref(ref)
    secret = token or get_token()  # only to scrub it from error text
    path = with_retries(
        lambda: snapshot_download(
            repo, revision=revision, allow_patterns=allow_patterns, token=token or None
        ),
        "download",
        ref,
        retries=retries,
        sleep=sleep,
        token=secret,
    )
    return Path(path)
