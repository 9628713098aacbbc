"""Signed releases: sign a built release, check a signed one, refuse one that does not verify.

:func:`sign_release` (``locopack sign``, ``build --sign-key``, ``push --sign-key``):

1. the release must pass its audit: a file changed after the build is never signed;
2. the card's "Signature" section is rewritten to name the signer, and the history's last
   entry records the card's new sha256 (its hash recomputed).  This is the one amendment a
   history gets: the card is written before the history, the signature after it;
3. the provenance (:mod:`.provenance`) is written from the history;
4. the secret scan runs, then every file is signed (:mod:`.signing`).

Nothing about the key reaches the release but its public fingerprint (or certificate): never
the key's path.  :func:`check_signature` adds the audit's checks: the signature against the
trusted keys, the provenance against the history, and each earlier release of the chain that
is reachable (a folder here, or the Hub) with its signer.  :func:`require_verified` is what
``apply``, ``generate`` and a recipe's ``base.public_key`` call before using a release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..hub_ref import is_hub_ref
from ..storage import atomic_write_bytes, atomic_write_text
from .history import entry_hash, read_history, write_history
from .layout import (
    CARD_FILE,
    HISTORY_FILE,
    MERGED_DIR,
    PROVENANCE_FILE,
    SIGNATURE_FILE,
    recorded_base,
    sha256_file,
)
from .provenance import (
    previous_signature_digest,
    provenance_statement,
    read_statement,
    signature_digest,
    statement_text,
)
from .signing import (
    SignatureError,
    SigningKey,
    TrustedKeys,
    UntrustedSigner,
    claimed_signer,
    sign_folder,
    signing_config,
    verify_folder,
)


def sign_release(folder: Path, key: SigningKey) -> str:
    """Sign the release in ``folder`` with ``key`` (see the module docstring).

    Returns:
        Who signed it, as the card names it.

    Raises:
        SignatureError: the release fails its audit, or cannot be signed with ``key``.
        SecretError: a file of the release holds a secret of this machine.
    """
    from .audit import audit_folder
    from .lock import build_lock

    folder = Path(folder)
    signer = key.signer()  # a key that cannot be read fails before anything is written
    config = signing_config(key)
    with build_lock(folder, command="sign"):
        report = audit_folder(folder)
        if not report.ok:
            failed = next(c for c in report.checks if not c.ok)
            raise SignatureError(
                f"{folder}: not signed, the release fails its audit ({failed.name}: "
                f"{failed.detail}); rebuild it or undo the change"
            )
        kept = {name: (folder / name).read_bytes() for name in (CARD_FILE, HISTORY_FILE)}
        try:
            _seal(folder, signer, config)
        except BaseException:  # the release is left as it was: unsigned, its card unchanged
            for name, data in kept.items():
                atomic_write_bytes(folder / name, data)
            write_history(folder, read_history(folder / HISTORY_FILE))  # and merged/'s copy
            for name in (PROVENANCE_FILE, SIGNATURE_FILE):
                (folder / name).unlink(missing_ok=True)
            raise
    return signer


def _seal(folder: Path, signer: str, config: Any) -> None:
    """Card, amended history, provenance, secret scan, signature (see the module docstring)."""
    from ..secret_scan import check_folder
    from .card import write_card
    from .layout import release_files

    write_card(folder, signer=signer)
    entries = read_history(folder / HISTORY_FILE)
    last = {**entries[-1], "files": {**entries[-1]["files"]}}
    last["files"][CARD_FILE] = sha256_file(folder / CARD_FILE)
    last["hash"] = entry_hash(last)
    entries[-1] = last
    write_history(folder, entries)
    previous = _previous_release(folder, last) if len(entries) > 1 else None
    statement = provenance_statement(folder, entries, previous and signature_digest(previous))
    atomic_write_text(folder / PROVENANCE_FILE, statement_text(statement))
    check_folder(folder, release_files(folder))
    sign_folder(folder, config)


def _previous_release(folder: Path, entry: dict[str, Any]) -> Path | None:
    """The folder of the release that ``entry``'s base came from (the base is its merged
    checkpoint, or the release itself), when it is reachable; None otherwise."""
    base = recorded_base(entry, folder)
    if base is None:
        return None
    path = Path(base)
    if not path.is_dir() and is_hub_ref(base):
        from ..errors import HubError
        from .pull import resolve_release

        revision = entry.get("base_commit") or entry.get("base_revision")
        try:
            path = resolve_release(f"{base}@{revision}" if revision else base)
        except HubError:
            return None
    if path.name == MERGED_DIR and (path.parent / HISTORY_FILE).is_file():
        return path.parent
    return path if (path / HISTORY_FILE).is_file() else None


def signature_status(folder: Path, trusted: TrustedKeys, snapshot: bool = False) -> str:
    """ "unsigned", "signed, not verified: no key given (...)" or "signed by ...".

    Raises:
        SignatureError: a key was given and the signature does not verify (or is missing).
    """
    if trusted.given:
        return f"signed by {verify_folder(folder, trusted, snapshot=snapshot)}"
    if not (folder / SIGNATURE_FILE).is_file():
        return "unsigned"
    claimed = claimed_signer(folder / SIGNATURE_FILE)
    return f"signed, not verified: no key given ({SIGNATURE_FILE} claims {claimed})"


def check_signature(report: Any, folder: Path, trusted: TrustedKeys, snapshot: bool) -> None:
    """Add the audit's checks of the signature, the provenance and the chain's signers."""
    try:
        report.add("signature", True, signature_status(folder, trusted, snapshot))
    except SignatureError as err:
        report.add("signature", False, str(err))
        return
    if (folder / SIGNATURE_FILE).is_file():
        _check_provenance(report, folder)
    if len(report.entries) > 1:
        report.add("signers", *_chain_signers(folder, report.entries, trusted))


def _check_provenance(report: Any, folder: Path) -> None:
    try:
        found = read_statement(folder)
    except ValueError as err:
        report.add("provenance", False, f"{PROVENANCE_FILE}: not valid ({err})")
        return
    if found is None:
        report.add("provenance", False, f"{PROVENANCE_FILE}: missing from a signed release")
        return
    expected = provenance_statement(folder, report.entries, previous_signature_digest(found))
    if found != expected:
        part = _first_difference(found, expected)
        report.add("provenance", False, f"{PROVENANCE_FILE}: {part} differs from the history")
    else:
        report.add("provenance", True, f"{PROVENANCE_FILE} matches the history")


def _first_difference(found: Any, expected: Any, where: str = "") -> str:
    if isinstance(found, dict) and isinstance(expected, dict):
        for key in sorted(set(found) | set(expected)):
            if found.get(key) != expected.get(key):
                return _first_difference(found.get(key), expected.get(key), f"{where}.{key}")
    if isinstance(found, list) and isinstance(expected, list) and len(found) == len(expected):
        for index, (one, other) in enumerate(zip(found, expected, strict=True)):
            if one != other:
                return _first_difference(one, other, f"{where}[{index}]")
    return where.lstrip(".") or "the statement"


def _chain_signers(folder: Path, entries: list[dict[str, Any]], trusted: TrustedKeys):
    """(ok, detail) naming the signer of each release of the chain, newest first, as far as
    the earlier releases are reachable."""
    names, ok, here = [], True, folder
    for entry in reversed(entries):
        try:
            status = signature_status(here, trusted, snapshot=here != folder)
        except UntrustedSigner:  # an earlier publisher's key that was not given
            claimed = claimed_signer(here / SIGNATURE_FILE)
            status = f"signed, not verified: its key was not given ({claimed})"
        except SignatureError as err:
            status, ok = f"FAILED: {err}", False
        names.append(f"#{entry.get('index')} {entry.get('recipe_name')}: {status}")
        statement = read_statement(here) if (here / SIGNATURE_FILE).is_file() else None
        recorded = previous_signature_digest(statement) if statement else None
        earlier = _previous_release(here, _last_entry(here)) if entry.get("index") else None
        if earlier is None:
            break
        if recorded and signature_digest(earlier) != recorded:
            names.append(f"{earlier.name}: its {SIGNATURE_FILE} is not the one recorded")
            ok = False
        here = earlier
    missing = len(entries) - len([n for n in names if n.startswith("#")])
    if missing:
        names.append(f"{missing} earlier release(s) not reachable here")
    return ok, "; ".join(names)


def _last_entry(folder: Path) -> dict[str, Any]:
    from .history import read_history

    return read_history(folder / HISTORY_FILE)[-1]


def require_verified(source: Path, trusted: TrustedKeys, *, snapshot: bool = False) -> str:
    """Who signed the release in ``source``; raises unless its audit, signature included,
    passes against ``trusted``.

    Raises:
        SignatureError: one line naming the release and why.
    """
    from .audit import audit_folder

    report = audit_folder(source, trusted=trusted, snapshot=snapshot)
    if not report.ok:
        failed = next(c for c in report.checks if not c.ok)
        raise SignatureError(f"{source}: refused, {failed.name}: {failed.detail}")
    return next(c.detail for c in report.checks if c.name == "signature")


def verified_release(ref: str | Path, trusted: TrustedKeys) -> Path:
    """The folder of the release ``ref`` (a folder, or ``ORG/NAME[@REVISION]``, downloaded
    whole) once it verifies against ``trusted``.

    Raises:
        SignatureError: ``ref`` is no release (a single file, a plain pipeline carries no
            signature), or it does not verify; one line naming it and why.
        HubError: a Hub release that cannot be downloaded.
    """
    path, snapshot = Path(ref), False
    if not path.exists() and is_hub_ref(str(ref)):
        from .pull import resolve_release

        path, snapshot = resolve_release(str(ref)), True
    if path.is_file() or path.name == MERGED_DIR:
        path = path.parent  # a file of a release, or its merged checkpoint
    if not (path / HISTORY_FILE).is_file():
        raise SignatureError(
            f"{ref}: not a locopack release (no {HISTORY_FILE}), so it carries no signature to "
            "verify; pass the release folder or ORG/NAME@REVISION"
        )
    require_verified(path, trusted, snapshot=snapshot)
    return path
