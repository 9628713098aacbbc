"""Signed releases: sign a built release, refuse one that does not verify.

:func:`sign_release` (``locopack sign``, ``build --sign-key``, ``push --sign-key``):

1. the release must pass its audit: a file changed after the build is never signed;
2. the card's "Signature" section is rewritten to name the signer, and the history's last
   entry records the card's new sha256 (its hash recomputed).  This is the one amendment a
   history gets: the card is written before the history, the signature after it;
3. the provenance (:mod:`.provenance`) is written from the history;
4. the secret scan runs, then every file is signed (:mod:`.signing`).

Nothing about the key reaches the release but its public fingerprint (or certificate): never
the key's path.  The audit checks a signed release (:mod:`.verify`); :func:`verified_release`
(in :mod:`.verify`) is what ``apply``, ``generate`` and a recipe's ``base.public_key`` call
before using one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LocopackError
from ..storage import atomic_write_bytes, atomic_write_text
from .history import entry_hash, read_history, write_history
from .layout import (
    CARD_FILE,
    HISTORY_FILE,
    PROVENANCE_FILE,
    SIGNATURE_FILE,
    release_recipe,
    sha256_file,
)
from .provenance import provenance_statement, signature_digest, statement_text
from .signing import SignatureError, SigningKey, sign_folder, signing_config
from .verify import previous_release

if TYPE_CHECKING:
    from model_signing import signing

    from ..recipe.schema import Recipe


def sign_release(folder: Path, key: SigningKey, recipe: Recipe | None = None) -> str:
    """Sign the release in ``folder`` with ``key`` (see the module docstring); ``recipe``: the
    release's recipe where the caller has read it already.

    Returns:
        Who signed it, as the card names it.

    Raises:
        SignatureError: the release fails its audit, or cannot be signed with ``key``.
        SecretError: a file of the release holds a secret of this machine.
    """
    from ..pipeline.lock import build_lock
    from .audit import audit_folder

    folder = Path(folder)
    signer = key.signer()  # a key that cannot be read fails before anything is written
    config = signing_config(key)
    with build_lock(folder, command="sign"):
        recipe = recipe or _readable_recipe(folder)  # read once, for the audit and the card
        report = audit_folder(folder, recipe=recipe)
        if not report.ok:
            failed = next(c for c in report.checks if not c.ok)
            raise SignatureError(
                f"{folder}: not signed, the release fails its audit ({failed.name}: "
                f"{failed.detail}); rebuild it or undo the change"
            )
        kept = {name: (folder / name).read_bytes() for name in (CARD_FILE, HISTORY_FILE)}
        try:
            _seal(folder, signer, config, recipe)
        except BaseException:  # the release is left as it was: unsigned, its card unchanged
            for name, data in kept.items():
                atomic_write_bytes(folder / name, data)
            write_history(folder, read_history(folder / HISTORY_FILE))  # and merged/'s copy
            for name in (PROVENANCE_FILE, SIGNATURE_FILE):
                (folder / name).unlink(missing_ok=True)
            raise
    return signer


def _readable_recipe(folder: Path) -> Recipe | None:
    """The release's recipe, or None where it cannot be read (the audit then says why)."""
    try:
        return release_recipe(folder)
    except (LocopackError, OSError):
        return None


def _seal(folder: Path, signer: str, config: signing.Config, recipe: Recipe | None) -> None:
    """Card, amended history, provenance, secret scan, signature (see the module docstring)."""
    from ..secret_scan import check_folder
    from .card import write_card
    from .layout import release_files

    write_card(folder, signer=signer, recipe=recipe)
    entries = read_history(folder / HISTORY_FILE)
    files = {**entries[-1].files, CARD_FILE: sha256_file(folder / CARD_FILE)}
    last = entries[-1].model_copy(update={"files": files})
    last.hash = entry_hash(last)
    entries[-1] = last
    write_history(folder, entries)
    previous = previous_release(folder, last) if len(entries) > 1 else None
    statement = provenance_statement(folder, entries, previous and signature_digest(previous))
    atomic_write_text(folder / PROVENANCE_FILE, statement_text(statement))
    check_folder(folder, release_files(folder))
    sign_folder(folder, config)
