"""``locopack sign``: sign a built release (key, certificate or Sigstore keyless); the helpers
of ``build --sign-key`` and ``push --sign-key``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from .group import echo

if TYPE_CHECKING:
    from ..recipe.schema import Recipe
    from ..release.signing import SigningKey


@click.command()
@click.argument("release", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--private-key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="EC private key (PEM, unencrypted; P-256/384/521) to sign with.",
)
@click.option(
    "--certificate",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="With --private-key: its X.509 signing certificate (PEM): certificate mode.",
)
@click.option(
    "--certificate-chain",
    "chain",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="With --certificate: the certificates above it, up to the root (PEM; repeatable).",
)
@click.option(
    "--sigstore",
    is_flag=True,
    help="Sigstore keyless signing: needs the network and an OIDC identity (a CI job's "
    "ambient credential, or SIGSTORE_ID_TOKEN).",
)
def sign(
    release: Path, private_key: Path | None, certificate: Path | None, chain, sigstore: bool
) -> None:
    """Sign every file of RELEASE (a built release folder) with OpenSSF model-signing.

    Writes release.sig and provenance.intoto.json (SLSA build provenance) into the release,
    and names the signer in its card.  A release that fails `locopack audit` is not signed.
    Verify with `locopack audit RELEASE --public-key PUB` (or --certificate-chain, or
    --sigstore-identity and --sigstore-issuer).
    """
    from ..release.attest import sign_release
    from ..release.signing import SigningKey

    if sigstore == (private_key is not None):
        raise click.UsageError("pass either --private-key KEY or --sigstore")
    if chain and certificate is None:
        raise click.UsageError("--certificate-chain goes with --certificate")
    if not release.is_dir():
        raise click.UsageError(f"{release}: no such folder")
    key = SigningKey(private_key, certificate, tuple(chain), sigstore)
    echo(f"signed {release} ({sign_release(release, key)})")


def signing_key(path: Path | None) -> SigningKey | None:
    """The :class:`~locopack.release.signing.SigningKey` of ``--sign-key`` (checked now)."""
    if path is None:
        return None
    from ..release.signing import SigningKey

    key = SigningKey(path)
    key.signer()
    return key


def sign_built(folder: Path, key: SigningKey | None, recipe: Recipe | None = None) -> None:
    """Sign the release in ``folder`` when ``--sign-key`` was given (``recipe``: its recipe,
    where the command has read it already)."""
    if key is not None:
        from ..release.attest import sign_release

        echo(f"signed {folder} ({sign_release(folder, key, recipe)})")


COMMANDS = (sign,)
