"""The card's "Signature" section: signed or not, by whom, and the command that verifies it
(the sentences are in the card's template).

The card is written before the release is signed (the signature covers the card), so signing
rewrites the card naming the signer it is about to use (:func:`~locopack.release.attest.
sign_release`); a card rebuilt later reads the signer from ``release.sig``.
"""

from __future__ import annotations

from pathlib import Path

from . import markdown_text as md
from .layout import SIGNATURE_FILE


def verify_command(where: str, signer: str) -> str:
    """The ``locopack audit`` command that verifies a release signed by ``signer`` (as
    :meth:`~locopack.release.signing.SigningKey.signer` names it) at ``where``."""
    if signer.startswith("Sigstore"):
        trust = "--sigstore-identity IDENTITY --sigstore-issuer ISSUER"
    elif signer.startswith("certificate"):
        trust = "--certificate-chain ROOT_CA.pem"
    else:
        trust = "--public-key PUBLISHER_KEY.pub"
    return f"locopack audit {where} {trust}"


def signature_section(folder: Path, where: str, signer: str | None = None) -> dict[str, str]:
    """The values of the section for the release in ``folder`` (``where``: how users name it,
    its Hub repo when the recipe gives one); ``signer``: who is about to sign it [default: as
    its ``release.sig`` claims, or unsigned when it has none]: the signer (escaped) and the
    command that verifies it, both empty when unsigned."""
    if signer is None and (folder / SIGNATURE_FILE).is_file():
        from .signing import SignatureError, claimed_signer

        try:
            signer = claimed_signer(folder / SIGNATURE_FILE)
        except SignatureError:
            signer = None
    if signer is None:
        return {"signer": "", "verify": ""}
    return {"signer": md.code(signer), "verify": md.fenced(verify_command(where, signer))}
