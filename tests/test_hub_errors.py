"""Hub failures become typed errors a caller can act on (:mod:`locopack.hub.errors`), each one
line with the token scrubbed; checked on the client's own exception types, no server needed."""

from __future__ import annotations

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from locopack.errors import HubError
from locopack.hub.calls import with_retries
from locopack.hub.errors import HubAuthError, HubNotFoundError, HubTransientError

TOKEN = "hf_abcdefghijklmnopqrstuvwxyz"


def _http(status: int, kind: type[HfHubHTTPError] = HfHubHTTPError) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://hub.example/api/models/org/x/commit/main")
    response = httpx2.Response(status, request=request)
    return kind(f"{status} for url with token {TOKEN}", response=response)


def _fail_with(errors: list[BaseException]):
    def call():
        raise errors.pop(0)

    return call


@pytest.mark.parametrize(
    ("status", "kind", "stdlib"),
    [
        (401, HubAuthError, PermissionError),
        (403, HubAuthError, PermissionError),
        (404, HubNotFoundError, FileNotFoundError),
        (503, HubTransientError, ConnectionError),
        (429, HubTransientError, ConnectionError),
        (400, HubError, OSError),
    ],
)
def test_each_status_is_its_own_kind(status, kind, stdlib):
    sleeps: list[float] = []
    errors = [_http(status) for _ in range(4)]
    with pytest.raises(HubError) as caught:
        with_retries(
            _fail_with(errors), "commit", "org/x", retries=3, sleep=sleeps.append, token=TOKEN
        )
    assert type(caught.value) is kind and isinstance(caught.value, stdlib)
    text = str(caught.value)
    assert "\n" not in text and TOKEN not in text
    # only transient failures are retried, with the back-off doubling from 0.5 s
    assert sleeps == ([0.5, 1.0, 2.0] if kind is HubTransientError else [])


def test_a_transient_failure_that_clears_is_no_error():
    errors: list[BaseException] = [_http(502), ConnectionResetError("reset by peer")]

    def call():
        if errors:
            raise errors.pop(0)
        return "done"

    sleeps: list[float] = []
    assert with_retries(call, "commit", "org/x", retries=3, sleep=sleeps.append, token=None) == (
        "done"
    )
    assert sleeps == [0.5, 1.0]


def test_a_missing_repo_on_download_says_so_and_how_to_reach_a_private_one():
    errors = [_http(404, RepositoryNotFoundError)]
    with pytest.raises(HubNotFoundError, match=r"org/x: no such repo .* HF_TOKEN"):
        with_retries(_fail_with(errors), "download", "org/x", retries=3, sleep=print, token=None)
