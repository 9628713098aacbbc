"""Options and helpers shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..recipe.schema import Recipe

#: ``--out`` of the commands that write a recipe's outputs
out_option = click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder [default: out/<recipe name>].",
)


#: ``--offline``: no Hub lookups while checking a recipe
offline_option = click.option(
    "--offline",
    is_flag=True,
    help="Skip the Hub lookups of Hub models and scorers (implied by HF_HUB_OFFLINE=1).",
)


#: ``--allow-unmet``: publish a release that misses its recipe's requirements
allow_unmet_option = click.option(
    "--allow-unmet",
    is_flag=True,
    help="Let a release that misses its recipe's requirements be published (build: exit 0 and "
    "the card and history say it was allowed; push: upload such a release, which must have "
    "been built with --allow-unmet, and say so in the commit message).",
)


class FormatsCommand(click.Command):
    """A command with one option per export format registered when it runs
    (:mod:`locopack.export.formats`), after its first argument: ``--NAME/--no-NAME`` (on by
    default) for a format every release carries, ``--NAME`` for the others, each with the
    format's help.  The callback gets them as ``format_NAME`` keywords; :func:`chosen_formats`
    turns those into {name: bool}."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        from ..export.formats import export_formats

        params = super().get_params(ctx)
        options: list[click.Parameter] = []
        for fmt in export_formats():
            flag, dest = fmt.name.replace("_", "-"), f"format_{fmt.name}"
            if fmt.required:
                decls = [f"--{flag}/--no-{flag}", dest]
                options.append(click.Option(decls, default=True, show_default=True, help=fmt.help))
            else:
                options.append(click.Option([f"--{flag}", dest], is_flag=True, help=fmt.help))
        return params[:1] + options + params[1:]


def chosen_formats(flags: dict[str, bool]) -> dict[str, bool]:
    """{format name: asked for} from the ``format_NAME`` keywords of a :class:`FormatsCommand`."""
    return {key.removeprefix("format_"): value for key, value in flags.items()}


def out_dir(out: Path | None, recipe: Recipe) -> Path:
    """``--out``, or ``out/<recipe name>``."""
    return out if out is not None else Path("out") / recipe.name


def layer_refs(layers: tuple[str, ...]) -> list[str] | None:
    """``--layers`` values (repeated or comma-separated) as a list, None when not given."""
    refs = [part.strip() for item in layers for part in item.split(",") if part.strip()]
    return refs or None


#: ``--fast/--full``: the localization sweep's mode
mode_option = click.option(
    "--fast/--full",
    "mode",
    default=None,
    callback=lambda ctx, param, value: None if value is None else ("fast" if value else "full"),
    help="Race the windows: every probe at growing steps and seeds, keeping those not clearly "
    "worse (fast), or score every window at full settings (full) [default: the recipe's "
    "localize.mode].",
)


def run_options(mode: str | None = None, **kwargs):
    """:class:`~locopack.pipeline.stages.RunOptions` with the group's global options."""
    from ..localize import SweepMode
    from ..pipeline.stages import RunOptions
    from .group import global_options

    return RunOptions(
        mode=None if mode is None else SweepMode(mode),
        allow_pickle=global_options().allow_pickle,
        **kwargs,
    )


#: ``--sign-key``: sign the release once it is built or before it is pushed
sign_key_option = click.option(
    "--sign-key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Sign the release with this EC private key (PEM) once built, before any push; see "
    "`locopack sign --help`.",
)


def trust_options(command):
    """``--public-key``, ``--certificate-chain``, ``--sigstore-identity/-issuer``: what a
    release's signature must verify against (passed to the command as ``trusted``)."""
    options = [
        click.option(
            "--public-key",
            "public_keys",
            multiple=True,
            type=click.Path(path_type=Path, dir_okay=False),
            help="Require a signature by this EC public key (PEM); repeat for the keys of "
            "several publishers of a chain.",
        ),
        click.option(
            "--certificate-chain",
            "certificate_chain",
            multiple=True,
            type=click.Path(path_type=Path, dir_okay=False),
            help="Require a signature by a certificate that chains to these (PEM) certificates.",
        ),
        click.option(
            "--sigstore-identity",
            default=None,
            help="Require a Sigstore keyless signature by this identity (needs the network).",
        ),
        click.option(
            "--sigstore-issuer",
            default=None,
            help="The OIDC issuer of --sigstore-identity, e.g. "
            "https://token.actions.githubusercontent.com.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def trusted_keys(public_keys, certificate_chain, sigstore_identity, sigstore_issuer):
    """The :class:`~locopack.release.signing.TrustedKeys` the trust options name."""
    from ..release.signing import TrustedKeys

    if bool(sigstore_identity) != bool(sigstore_issuer):
        raise click.UsageError("--sigstore-identity and --sigstore-issuer go together")
    return TrustedKeys(
        tuple(public_keys), tuple(certificate_chain), sigstore_identity, sigstore_issuer
    )
