"""Calls to the Hugging Face Hub made safe to report: transient failures (HTTP 5xx/408/429,
resets, timeouts) retried with a short exponential back-off, and every failure turned into one
:class:`~locopack.errors.HubError` line with the token scrubbed from it, of the kind the
failure was (:mod:`.errors`: auth, not found, transient).  Used by the push (:mod:`.push`) and
the pull (:mod:`.pull`) alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from ..errors import HubError, LocopackError
from .errors import BY_KIND, HubNotFoundError

T = TypeVar("T")

BACKOFF_START = 0.5
BACKOFF_MAX = 8.0
AUTH_HINT = "check HF_TOKEN or `hf auth login`"


def with_retries(
    fn: Callable[[], T],
    step: str,
    what: str,
    *,
    retries: int,
    sleep: Callable[[float], None],
    token: str | None,
) -> T:
    """``fn()``, retried on transient failures; any failure becomes a one-line HubError."""
    delay = BACKOFF_START
    for attempt in range(retries + 1):
        try:
            return fn()
        except LocopackError:
            raise
        except Exception as err:  # the client raises HTTP, OS, value and runtime errors
            kind = _classify(err)
            if kind == "transient" and attempt < retries:
                sleep(delay)
                delay = min(2 * delay, BACKOFF_MAX)
                continue
            raise _hub_error(step, what, err, kind, attempt + 1, token) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _chain(err: BaseException):
    seen: set[int] = set()
    todo = [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def _transport_errors() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for name in ("httpx2", "httpx"):
        try:
            lib = __import__(name)
        except ImportError:
            continue
        kinds += [lib.NetworkError, lib.TimeoutException, lib.RemoteProtocolError]
    return tuple(kinds)


def _classify(err: BaseException) -> str:
    """'auth', 'missing', 'transient' or 'other'."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    transport = _transport_errors()
    for e in _chain(err):
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            status = e.response.status_code
            if isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError)):
                return "missing"
            if status in (401, 403):
                return "auth"
            if isinstance(e, RemoteEntryNotFoundError) or status == 404:
                return "missing"
            if status >= 500 or status in (408, 429):
                return "transient"
            return "other"
        if isinstance(e, transport):
            return "transient"
    return "other"


def _hub_error(
    step: str, what: str, err: BaseException, kind: str, attempts: int, token: str | None
) -> HubError:
    error = BY_KIND[kind]
    if step == "download":
        if kind in ("missing", "auth"):
            return HubNotFoundError(
                f"{what}: no such repo or revision on the Hub (if it is private, {AUTH_HINT})"
            )
        detail = _one_line(err, token)
        if kind == "transient":
            return error(f"{what}: cannot reach the Hub after {attempts} attempts: {detail}")
        return error(f"{what}: download failed: {detail}")
    if kind == "auth":
        return error(f"authentication failed for {what}: {AUTH_HINT}")
    detail = _one_line(err, token)
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    nothing = (
        "; the Hub made no commit and the local folder is unchanged" if step == "commit" else ""
    )
    return error(f"push to {what}: {step} failed{tries}: {detail}{nothing}")


def _one_line(err: BaseException, token: str | None) -> str:
    """The error's text on one line, at most 300 characters, with the token scrubbed."""
    from huggingface_hub.errors import HfHubHTTPError

    http = next((e for e in _chain(err) if isinstance(e, HfHubHTTPError)), None)
    if http is not None and http.response is not None:
        server = " ".join((http.server_message or "").split())
        text = f"HTTP {http.response.status_code}" + (f": {server}" if server else "")
    else:
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = _scrub(text or type(err).__name__, token)
    return text if len(text) <= 300 else text[:299] + "…"


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text))
