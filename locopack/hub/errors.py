"""The kinds of Hub failure a caller can act on, each a :class:`~locopack.errors.HubError` that
also subclasses the matching stdlib type (as huggingface_hub's own errors do):

- :class:`HubAuthError` (``PermissionError``): the token is missing, wrong or lacks the right;
  log in again or pass another token.
- :class:`HubNotFoundError` (``FileNotFoundError``): no such repo, revision or file (a private
  repo the token cannot see reads the same on the Hub); check the name.
- :class:`HubTransientError` (``ConnectionError``): the Hub could not be reached or answered
  5xx/408/429 through every retry; try again later, nothing was half-written.

Any other failure is a plain :class:`~locopack.errors.HubError`.
"""

from __future__ import annotations

from ..errors import HubError


class HubAuthError(HubError, PermissionError):
    """The Hub refused the token (HTTP 401/403)."""


class HubNotFoundError(HubError, FileNotFoundError):
    """No such repo, revision or file on the Hub (HTTP 404)."""


class HubTransientError(HubError, ConnectionError):
    """The Hub stayed unreachable or overloaded through every retry."""


#: the error class of each kind :func:`locopack.hub.calls.with_retries` tells apart
BY_KIND: dict[str, type[HubError]] = {
    "auth": HubAuthError,
    "missing": HubNotFoundError,
    "transient": HubTransientError,
    "other": HubError,
}
