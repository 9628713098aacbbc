"""The one rule for what names a Hub repository: ``ORG/NAME`` with an optional ``@REVISION``.

Used by the recipe schema, model loading, the card and the Hub client alike, so that a string
is a Hub reference everywhere or nowhere.  :func:`hub_unreachable` is the one rule for "the Hub
could not be reached", whatever library's error says so.
"""

from __future__ import annotations

import os
import re
import socket

from .errors import HubError, OfflineError

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


def is_hub_ref(ref: object) -> bool:
    """True when ``ref`` reads as ``ORG/NAME[@REVISION]`` (it may still not exist)."""
    try:
        parse_ref(ref)
    except HubError:
        return False
    return True


def is_hub_id(ref: object) -> bool:
    """True when ``ref`` reads as a plain repo id ``ORG/NAME`` (no revision)."""
    return is_hub_ref(ref) and "@" not in ref


#: errors that mean no connection at all (refused, reset, no route, no name), by type or by the
#: class names httpx, httpcore and urllib3 give them; an HTTP error status is an answer, not one
_NO_CONNECTION = (ConnectionError, socket.gaierror)
_NO_CONNECTION_NAMES = {"ConnectError", "ConnectTimeout", "NetworkError", "ProxyError"}
_NO_CONNECTION_NAMES |= {"NewConnectionError", "NameResolutionError", "ConnectTimeoutError"}


def hub_unreachable(err: BaseException, what: str) -> OfflineError | None:
    """The :class:`OfflineError` for ``err`` when it, or an error it came from, says that no
    connection could be made (whatever ``HF_HUB_OFFLINE`` says); None otherwise.  ``what``
    names the stage or thing that needed the Hub."""
    found, seen = err, 0
    while found is not None and seen < 8:
        names = {cls.__name__ for cls in type(found).__mro__}
        if isinstance(found, _NO_CONNECTION) or names & _NO_CONNECTION_NAMES:
            cause = (str(found).splitlines() or [type(found).__name__])[0][:100]
            endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
            return OfflineError(
                f"offline: {what}: cannot reach the Hub at {endpoint} ({cause}); check the "
                "network, or set HF_HUB_OFFLINE=1 to use only what is in the local cache"
            )
        found, seen = found.__cause__ or found.__context__, seen + 1
    return None
