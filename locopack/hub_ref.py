"""The one rule for what names a Hub repository: ``ORG/NAME`` with an optional ``@REVISION``.

Used by the recipe schema, model loading, the card and the Hub client alike, so that a string
is a Hub reference everywhere or nowhere.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import HubError

_NAME = r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"{_NAME}/{_NAME}")
_REF = re.compile(rf"(?P<repo>{REPO_ID.pattern})(?:@(?P<rev>[^\s@]+))?")


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split ``ORG/NAME[@REVISION]`` into ``(repo id, revision or None)``.

    Raises:
        HubError: ``ref`` is not of that form.
    """
    match = _REF.fullmatch(ref.strip()) if isinstance(ref, str) else None
    if match is None or ".." in match["repo"] or "--" in match["repo"]:
        shown = ref[:80] + "…" if isinstance(ref, str) and len(ref) > 80 else ref
        raise HubError(
            f"{shown!r} is not a Hub reference: expected ORG/NAME or ORG/NAME@REVISION "
            "(a branch, tag or commit)"
        )
    return match["repo"], match["rev"]


def is_hub_ref(ref: Any) -> bool:
    """True when ``ref`` reads as ``ORG/NAME[@REVISION]`` (it may still not exist)."""
    try:
        parse_ref(ref)
    except HubError:
        return False
    return True


def is_hub_id(ref: Any) -> bool:
    """True when ``ref`` reads as a plain repo id ``ORG/NAME`` (no revision)."""
    return is_hub_ref(ref) and "@" not in ref
