"""Sign a release folder and verify its signature, through OpenSSF's ``model-signing``.

The library (``model_signing``, the ``sign`` extra) hashes every file of a folder into an
in-toto statement and signs it into a Sigstore bundle: :data:`SIGNATURE_FILE` in the release.
No signature code lives here: this module chooses which files are signed and turns the
library's errors into one line each.

Which files: every file of the release (:func:`~locopack.release.layout.release_files`) but the
signature itself.  The sweep's ``cache/`` and hidden files, which never leave the machine, are
the library's *ignored paths*; so are git's files, as the library always ignores them (a Hub
repo's ``.gitattributes``).  Verification hashes the folder again under the same rule, so a
file changed, added or removed after signing fails it, named.

Three ways to sign, as the library offers them (:class:`SigningKey`):

- an elliptic-curve private key (PEM; P-256, P-384 or P-521), verified with its public key;
- the same key with its X.509 signing certificate and the chain above it, verified against the
  chain's root (``--certificate-chain``);
- Sigstore's keyless flow (``--sigstore``): an OIDC identity (a CI job's ambient credential,
  or ``SIGSTORE_ID_TOKEN``) gets a short-lived certificate from Fulcio and the signature is
  logged in Rekor.  It needs the network; verification then names the identity and its issuer.

An ECDSA signature draws a random nonce, so signing the same files twice gives two different
``release.sig`` files, both valid: the signature is the one file of a release that is not
byte-reproducible.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LocopackError
from ..storage import atomic_write_bytes
from .layout import CACHE_DIR, SIGNATURE_FILE, is_local_only

if TYPE_CHECKING:
    from model_signing import hashing, signing

#: the environment variable that holds an OIDC token for keyless signing
TOKEN_VARIABLE = "SIGSTORE_ID_TOKEN"

NEEDS_EXTRA = "signing needs the `sign` extra: pip install 'locopack[sign]'"


class SignatureError(LocopackError, ValueError):
    """A release cannot be signed, or its signature does not verify; one line naming why."""


class UntrustedSigner(SignatureError):
    """A release signed by a key other than those given."""


@dataclass(frozen=True)
class SigningKey:
    """How to sign: ``private_key`` (PEM), with ``certificate`` and ``chain`` in certificate
    mode; or ``sigstore`` (keyless)."""

    private_key: Path | None = None
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()
    sigstore: bool = False

    def signer(self) -> str:
        """Who signs, as the card and the audit name it: the key's or certificate's fingerprint
        (never the key file's path)."""
        if self.sigstore:
            return "Sigstore keyless (the OIDC identity in the certificate of release.sig)"
        if self.certificate is not None:
            data = _read(self.certificate, "--certificate")
            try:
                return certificate_name(data)
            except ValueError as err:
                raise SignatureError(
                    f"--certificate {self.certificate}: not a PEM X.509 certificate ({err})"
                ) from None
        return f"key {key_fingerprint(_public_pem(self))}"


@dataclass(frozen=True)
class TrustedKeys:
    """What signatures are checked against: public keys (PEM), a certificate chain's root(s),
    or a Sigstore identity and its OIDC issuer."""

    public_keys: tuple[Path, ...] = ()
    certificate_chain: tuple[Path, ...] = ()
    identity: str | None = None
    issuer: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.public_keys or self.certificate_chain or self.identity)


def key_fingerprint(public_pem: bytes) -> str:
    """``sha256:<hex>`` of a public key's PEM (SubjectPublicKeyInfo): the hint the library
    writes into a key-signed bundle; ``openssl ec -pubin -in pub.pem -pubout | sha256sum``
    prints it."""
    return "sha256:" + hashlib.sha256(public_pem).hexdigest()


def certificate_name(der_or_pem: bytes) -> str:
    """``certificate <subject> sha256:<fingerprint>`` of an X.509 certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        cert = x509.load_pem_x509_certificate(der_or_pem)
    except ValueError:
        cert = x509.load_der_x509_certificate(der_or_pem)
    digest = cert.fingerprint(hashes.SHA256()).hex()
    return f"certificate {cert.subject.rfc4514_string()} sha256:{digest}"


def _read(path: Path, option: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise SignatureError(f"{option} {path}: cannot be read ({err.strerror})") from None


def _public_pem(key: SigningKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    data = _read(key.private_key, "--private-key")
    try:
        private = serialization.load_pem_private_key(data, None)
        return private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except (ValueError, TypeError) as err:
        raise SignatureError(
            f"--private-key: not an unencrypted PEM private key ({err}); make one with "
            "`openssl ecparam -name prime256v1 -genkey -noout -out key.pem`"
        ) from None


def _hashing(folder: Path, snapshot: bool) -> hashing.Config:
    """The library's hashing of a release folder: sha256 per file, ignoring the signature,
    ``cache/`` and hidden paths (see the module docstring)."""
    from model_signing import hashing

    ignored = {SIGNATURE_FILE, CACHE_DIR}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            relative = Path(root, name).relative_to(folder)
            parent_local = relative.parent != Path(".") and is_local_only(relative.parent)
            if is_local_only(relative) and not parent_local:
                ignored.add(relative.as_posix())
    return (
        hashing.Config()
        .set_ignored_paths(paths=sorted(ignored))
        .set_allow_symlinks(snapshot)  # a Hub snapshot's files are links into its blob store
    )


def signing_config(key: SigningKey) -> signing.Config:
    """The library's signing configuration for ``key``, ready before anything is written (a
    key that cannot be read, or Sigstore out of reach, fails here).

    Raises:
        SignatureError: the `sign` extra is missing, a key or certificate cannot be read or
            does not match, or (keyless) Sigstore's trust root cannot be fetched.
    """
    try:
        from model_signing import signing
    except ImportError:
        raise SignatureError(NEEDS_EXTRA) from None
    config = signing.Config()
    try:
        if key.sigstore:
            _keyless(
                lambda: config.use_sigstore_signer(
                    use_ambient_credentials=True,
                    identity_token=os.environ.get(TOKEN_VARIABLE) or None,
                    force_oob=True,  # print the URL instead of opening a browser
                )
            )
        elif key.certificate is not None:
            key.signer()  # one clear line for a key or certificate that cannot be read
            config.use_certificate_signer(
                private_key=key.private_key,
                signing_certificate=key.certificate,
                certificate_chain=key.chain,
            )
        else:
            key.signer()
            config.use_elliptic_key_signer(private_key=key.private_key)
    except SignatureError:
        raise
    except ValueError as err:  # a key of an unsupported curve, a certificate of another key
        raise SignatureError(f"cannot sign with this key: {err}") from None
    return config


def sign_folder(folder: Path, config: signing.Config) -> Path:
    """Sign every file of the release in ``folder`` into ``folder/release.sig`` (atomically)
    with ``config`` (:func:`signing_config`).

    Raises:
        SignatureError: (keyless) no OIDC identity, or Sigstore's services out of reach.
    """
    config.set_hashing_config(_hashing(folder, snapshot=False))
    with tempfile.TemporaryDirectory() as scratch:
        written = Path(scratch) / SIGNATURE_FILE
        _keyless(lambda: config.sign(folder, written))
        return atomic_write_bytes(folder / SIGNATURE_FILE, written.read_bytes())


def _keyless(step: Callable[[], object]) -> None:
    """Run a step that may reach Sigstore's services; their failures as one line."""
    from sigstore.errors import Error as SigstoreFailure

    try:
        step()
    except (SigstoreFailure, OSError) as err:
        raise SignatureError(
            f"--sigstore: keyless signing needs the network (Sigstore's trust root, Fulcio, "
            f"Rekor) and an OIDC identity (a CI job's credential or {TOKEN_VARIABLE}): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}"
        ) from None


def claimed_signer(signature: Path) -> str:
    """Who the bundle at ``signature`` says signed it, without verifying anything: its key
    hint or its signing certificate.

    Raises:
        SignatureError: not a readable Sigstore bundle.
    """
    try:
        material = json.loads(signature.read_text(encoding="utf-8"))["verificationMaterial"]
        if "publicKey" in material:
            return f"key sha256:{material['publicKey']['hint']}"
        if "x509CertificateChain" in material:
            der = material["x509CertificateChain"]["certificates"][0]["rawBytes"]
        else:
            der = material["certificate"]["rawBytes"]
        return certificate_name(base64.b64decode(der))
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise SignatureError(
            f"{SIGNATURE_FILE}: not a Sigstore bundle ({type(err).__name__}: {err})"
        ) from None


def verify_folder(folder: Path, trusted: TrustedKeys, *, snapshot: bool = False) -> str:
    """Verify ``folder/release.sig`` against ``trusted`` and that it signs exactly the files of
    the release in ``folder`` (``snapshot``: a Hub snapshot, whose files are links).

    Returns:
        Who signed: the key or certificate that verified it, or the Sigstore identity.

    Raises:
        SignatureError: one line naming why it does not verify (no signature, another key, a
            file changed, added or removed since signing, an altered bundle).
    """
    signature = folder / SIGNATURE_FILE
    if not signature.is_file():
        raise SignatureError(
            f"{SIGNATURE_FILE}: missing; the release is unsigned (or its signature was removed)"
        )
    claimed = claimed_signer(signature)
    try:
        from model_signing import verifying
    except ImportError:
        raise SignatureError(NEEDS_EXTRA) from None
    config = verifying.Config()
    if trusted.identity:
        config.use_sigstore_verifier(identity=trusted.identity, oidc_issuer=trusted.issuer or "")
        signer = f"Sigstore identity {trusted.identity} ({trusted.issuer})"
    elif trusted.certificate_chain:
        config.use_certificate_verifier(certificate_chain=trusted.certificate_chain)
        signer = claimed
    else:
        keys = {key_fingerprint(_read(p, "--public-key")): p for p in trusted.public_keys}
        matching = [p for fingerprint, p in keys.items() if f"key {fingerprint}" == claimed]
        if not matching:
            raise UntrustedSigner(
                f"{SIGNATURE_FILE}: signed by {claimed}, not by the given key(s) "
                f"({', '.join(keys)})"
            )
        config.use_elliptic_key_verifier(public_key=matching[0])
        signer = claimed
    config.set_hashing_config(_hashing(folder, snapshot))
    try:
        config.verify(folder, signature)
    except Exception as err:  # noqa: BLE001 - any failure of a library check means "not verified"
        raise SignatureError(f"{SIGNATURE_FILE}: does not verify: {_explain(err)}") from None
    return signer


def _explain(err: Exception) -> str:
    """The library's complaint in one line, naming the files it concerns."""
    from cryptography.exceptions import InvalidSignature

    if isinstance(err, InvalidSignature):
        return "its signature does not match the statement it carries (the bundle was altered)"
    text = str(err)
    found = []
    for kind, pattern in (
        ("changed since signing", r"Hash mismatch for \\?'([^'\\]*)\\?'"),
        ("added after signing", r"Extra files found in model \\?'[^']*': ([^\"'\\\]]*)"),
        ("signed but missing", r"Missing files in model \\?'[^']*': ([^\"'\\\]]*)"),
        ("signed but missing", r"Cannot use \\?'([^'\\]*)\\?' as file or directory"),
    ):
        found += [f"{names.strip()}: {kind}" for names in re.findall(pattern, text)]
    if found:
        return "; ".join(found)
    first = text.splitlines()[0] if text else "no detail"
    return f"{type(err).__name__}: {first}"
