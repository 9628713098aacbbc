"""No secret reaches a release: the Hub token and credential-like values, looked for in the
recipe's text before anything is written, and in every file of a release before its history
seals it and before it is pushed.

A release is public, and its files carry text a recipe pulls in (prompts, descriptions, prompt
files' lines), so a token that slipped into any of them would be published with the weights.
What counts as a secret on this machine (:func:`known_secrets`):

- the Hub token from every source huggingface_hub reads (``HF_TOKEN``, the token file and the
  stored tokens of ``hf auth login``);
- the value of every environment variable whose name says it is a credential (``*TOKEN*``,
  ``*SECRET*``, ``*PASSWORD*``, ``*API_KEY*``, ...), and of any whose value has the shape of a
  well-known token (``hf_...``, ``ghp_...``, ``AKIA...``, ``sk-...``).

Values shorter than :data:`MIN_LENGTH` characters are ignored (they would match by chance).
The search is on raw bytes, so safetensors headers, JSON records and image metadata are all
covered; a hit names the file (or recipe field) and the variable, never the value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import SecretError

#: the shortest value treated as a secret
MIN_LENGTH = 8
_CREDENTIAL_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH", re.IGNORECASE
)
_TOKEN_SHAPE = re.compile(
    r"hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}|AKIA[0-9A-Z]{16}|sk-[A-Za-z0-9_-]{20,}"
)


def known_secrets() -> dict[str, bytes]:
    """{where it comes from (a name, never the value): the secret's bytes} on this machine."""
    found: dict[str, bytes] = {}
    for name, value in os.environ.items():
        if _CREDENTIAL_NAME.search(name) or _TOKEN_SHAPE.fullmatch(value.strip()):
            found[f"the environment variable {name}"] = value.strip().encode()
    for name, value in _hub_tokens().items():
        found.setdefault(name, value.encode())
    return {name: value for name, value in found.items() if len(value) >= MIN_LENGTH}


def _hub_tokens() -> dict[str, str]:
    """The tokens huggingface_hub would use or has stored, by where they come from."""
    from huggingface_hub.utils import get_stored_tokens, get_token

    tokens = {"the Hub token": get_token() or ""}
    try:
        stored = get_stored_tokens()
    except (OSError, ValueError):
        stored = {}
    tokens |= {f"the stored Hub token {name!r}": value for name, value in stored.items()}
    return {name: value for name, value in tokens.items() if value}


def secret_in(data: bytes, secrets: dict[str, bytes]) -> str | None:
    """Where the first secret found in ``data`` comes from, or None."""
    return next((name for name, value in secrets.items() if value in data), None)


def check_texts(texts: dict[str, str]) -> None:
    """Refuse when any of ``texts`` ({where: text}) holds a secret of this machine.

    Raises:
        SecretError: naming where the secret is and where it comes from.
    """
    secrets = known_secrets()
    for where, text in texts.items():
        name = secret_in(text.encode("utf-8", "surrogateescape"), secrets)
        if name:
            raise SecretError(
                f"{where}: holds {name}; a release is public, so locopack will not build it: "
                "remove the secret from the recipe or the file it reads"
            )


def check_folder(folder: Path, files: list[str]) -> None:
    """Refuse when any of ``files`` (relative to ``folder``) holds a secret of this machine.

    Raises:
        SecretError: naming the file and where the secret comes from.
    """
    secrets = known_secrets()
    if not secrets:
        return
    for name in files:
        found = _secret_in_file(folder / name, secrets)
        if found:
            raise SecretError(
                f"{folder / name}: holds {found}; a release is public, so it is refused: "
                "remove the file or the text that brought the secret in, and rebuild"
            )


def _secret_in_file(path: Path, secrets: dict[str, bytes]) -> str | None:
    """:func:`secret_in` over a file read in chunks (a merged checkpoint is gigabytes), each
    chunk joined to the end of the one before so that no secret is missed across a seam."""
    overlap = max(len(value) for value in secrets.values()) - 1
    tail = b""
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            found = secret_in(tail + chunk, secrets)
            if found:
                return found
            tail = (tail + chunk)[-overlap:] if overlap else b""
    return None
