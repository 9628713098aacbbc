"""The audit's checks of a signed release (:func:`check_signature`): the signature against the
trusted keys (:mod:`.signing`), the provenance against the history (:mod:`.provenance`), and
the signer of each earlier release of the chain that is reachable (a folder here, or the Hub),
checking that the one just before still carries the signature the provenance recorded.

Without trusted keys the signature is reported, not required: "unsigned", or "signed, not
verified: no key given" with the signer the bundle claims.  An earlier release signed by a key
that was not given is reported the same way; one that fails against a key that was given fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import LocopackError
from ..hub_ref import is_hub_ref
from .history import read_history
from .layout import HISTORY_FILE, MERGED_DIR, PROVENANCE_FILE, SIGNATURE_FILE, recorded_base
from .provenance import (
    previous_signature_digest,
    provenance_statement,
    read_statement,
    signature_digest,
)
from .records.history import HistoryEntry
from .signing import SignatureError, TrustedKeys, UntrustedSigner, claimed_signer, verify_folder


def previous_release(folder: Path, entry: HistoryEntry) -> Path | None:
    """The folder of the release that ``entry``'s base came from (the base is its merged
    checkpoint, or the release itself), when it is reachable; None otherwise."""
    base = recorded_base(entry, folder)
    if base is None:
        return None
    path = Path(base)
    if not path.is_dir() and is_hub_ref(base):
        from ..errors import HubError
        from ..hub.pull import resolve_release

        revision = entry.base_commit or entry.base_revision
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


class _Report(Protocol):
    """What the signature checks add their lines to (an audit's report)."""

    entries: list[dict[str, object]]

    def add(self, name: str, ok: bool, detail: str = "") -> bool: ...


def check_signature(report: _Report, folder: Path, trusted: TrustedKeys, snapshot: bool) -> None:
    """Add the audit's checks of the signature, the provenance and the chain's signers."""
    try:
        report.add("signature", True, signature_status(folder, trusted, snapshot))
    except SignatureError as err:
        report.add("signature", False, str(err))
        return
    if (folder / SIGNATURE_FILE).is_file():
        _check_provenance(report, folder)
    elif (folder / PROVENANCE_FILE).exists():  # no file but the records goes unrecorded
        report.add(
            "provenance",
            False,
            f"{PROVENANCE_FILE}: present without {SIGNATURE_FILE} (the signature was removed, "
            "or the file added): sign the release again, or remove the file",
        )
    if len(report.entries) > 1:
        report.add("signers", *_chain_signers(folder, report.entries, trusted))


def _check_provenance(report: _Report, folder: Path) -> None:
    problem = provenance_problem(folder, report.entries)
    report.add("provenance", problem is None, problem or f"{PROVENANCE_FILE} matches the history")


def provenance_problem(folder: Path, entries: list[HistoryEntry]) -> str | None:
    """What is wrong with the provenance of the signed release in ``folder`` whose history is
    ``entries`` (missing, unreadable, or not what the history gives); None when nothing."""
    try:
        found = read_statement(folder)
    except ValueError as err:
        return f"{PROVENANCE_FILE}: not valid ({err})"
    if found is None:
        return f"{PROVENANCE_FILE}: missing from a signed release"
    try:
        expected = provenance_statement(folder, entries, previous_signature_digest(found))
    except (SignatureError, KeyError, TypeError, AttributeError) as err:  # no extra; odd record
        return f"{PROVENANCE_FILE}: cannot be checked ({err})"
    if found != expected:
        return f"{PROVENANCE_FILE}: {_first_difference(found, expected)} differs from the history"
    return None


def _first_difference(found: object, expected: object, where: str = "") -> str:
    if isinstance(found, dict) and isinstance(expected, dict):
        for key in sorted(set(found) | set(expected)):
            if found.get(key) != expected.get(key):
                return _first_difference(found.get(key), expected.get(key), f"{where}.{key}")
    if isinstance(found, list) and isinstance(expected, list) and len(found) == len(expected):
        for index, (one, other) in enumerate(zip(found, expected, strict=True)):
            if one != other:
                return _first_difference(one, other, f"{where}[{index}]")
    return where.lstrip(".") or "the statement"


def _chain_signers(folder: Path, entries: list[HistoryEntry], trusted: TrustedKeys):
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
        names.append(f"#{entry.index} {entry.recipe_name}: {status}")
        statement = read_statement(here) if (here / SIGNATURE_FILE).is_file() else None
        recorded = previous_signature_digest(statement) if statement else None
        earlier = previous_release(here, _last_entry(here)) if entry.index else None
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


def _last_entry(folder: Path) -> HistoryEntry:
    return read_history(folder / HISTORY_FILE)[-1]


def require_verified(source: Path, trusted: TrustedKeys, *, snapshot: bool = False) -> str:
    """Who signed the release in ``source``; raises unless its signature verifies against
    ``trusted`` (so its files are exactly those the publisher signed, after auditing them)
    and its provenance matches its history.

    Raises:
        SignatureError: one line naming the release and why.
    """
    try:
        signer = verify_folder(source, trusted, snapshot=snapshot)
        problem = provenance_problem(source, read_history(source / HISTORY_FILE))
    except LocopackError as err:
        raise SignatureError(f"{source}: refused, {err}") from None
    if problem:
        raise SignatureError(f"{source}: refused, {problem}")
    return signer


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
        from ..hub.pull import resolve_release

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
