"""The ``locopack`` command line: parse arguments, call the library, report errors in one line.

The library raises :class:`~locopack.errors.LocopackError`; :func:`main` turns it into
``error: <message>`` on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import click

from . import __version__
from .errors import LocopackError

# Library chatter (e.g. transformers noting that torchvision is absent) is not for our users.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def _quiet_libraries() -> None:
    """Silence third-party progress bars and info logs; locopack prints its own progress."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings reach the terminal as one line, like errors."""
    click.echo(f"warning: {message}", err=True)


class _UserError(click.ClickException):
    """A LocopackError on its way to the terminal: one line, exit status 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True, file=file)


class _Group(click.Group):
    """The command group; turns library errors into :class:`_UserError`."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LocopackError as err:
            raise _UserError(str(err)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="locopack")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    envvar="LOCOPACK_THREADS",
    default=None,
    help="CPU threads for torch [env LOCOPACK_THREADS; default: torch's choice]. "
    "1 is fastest for tiny models on small machines.",
)
@click.option(
    "--allow-pickle",
    is_flag=True,
    envvar="LOCOPACK_ALLOW_PICKLE",
    help="Also read pickled (.bin/.ckpt) model weights [env LOCOPACK_ALLOW_PICKLE=1]. "
    "Unpickling can run arbitrary code: use it only for files you trust.",
)
def cli(threads: int | None, allow_pickle: bool) -> None:
    """Localize knowledge in a text-to-image model and edit it, from a YAML recipe.

    \b
    A typical session:
      locopack twin sd1 out/tiny-sd1       # build a tiny offline model to try things on
      locopack layers out/tiny-sd1         # where text enters its denoiser, in order
      locopack validate recipe.yaml        # check a recipe before running it
      locopack localize recipe.yaml        # LocoGen: which window of sites holds the concept
      locopack edit recipe.yaml            # LocoEdit: closed-form edit -> delta.safetensors
      locopack neurons recipe.yaml         # neuron-level alternative -> neurons.safetensors
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    warnings.showwarning = _show_warning
    if allow_pickle:  # read by models.loading.load_pipeline, also in launched processes
        os.environ["LOCOPACK_ALLOW_PICKLE"] = "1"


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
def validate(recipe: Path) -> None:
    """Check RECIPE against the schema and print a summary.

    When the recipe's base model is a local folder, the localization window and any explicit
    layers are also checked against the model's text-conditioning sites.  Exits 1 on errors.
    """
    from .recipe import check_against_model, load_recipe, summarize

    loaded = load_recipe(recipe)
    base = loaded.local_path(loaded.base.model)
    if Path(base).is_dir():
        from .models import load_denoiser_layout

        family, denoiser = load_denoiser_layout(base, loaded.base.revision)
        sites = family.sites(denoiser)
        check_against_model(loaded, len(sites), [s.path for s in sites])
    click.echo(summarize(loaded))
    click.echo("recipe is valid")


@cli.command()
@click.argument("model")
@click.option("--revision", default=None, help="Branch, tag or commit of a Hub model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def layers(model: str, revision: str | None, as_json: bool) -> None:
    """List MODEL's text-conditioning sites in network execution order.

    MODEL is a local pipeline folder or a Hub id (org/name).  Only the configs are read: the
    denoiser is built without weights, so this is fast even for large models.
    """
    from .models import load_denoiser_layout

    family, denoiser = load_denoiser_layout(model, revision)
    sites = family.sites(denoiser)
    if as_json:
        payload = {
            "model": model,
            "family": family.name,
            "family_name": family.pretty_name,
            "pooled_text_path": family.has_pooled_text_path,
            "sites": [s.to_dict() for s in sites],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(f"{model}: {family.pretty_name} ({family.name}), {len(sites)} sites")
    width = max(len(s.path) for s in sites)
    click.echo(f"{'#':>3}  {'site':<{width}}  key/value")
    for s in sites:
        proj = f"{s.key.rsplit('.', 1)[1]}/{s.value.rsplit('.', 1)[1]}"
        click.echo(f"{s.index:>3}  {s.path:<{width}}  {proj} {s.in_features} -> {s.out_features}")
    if family.has_pooled_text_path:
        click.echo("note: text also enters through a pooled embedding that is not a site")


@cli.command()
@click.argument("family_name", metavar="FAMILY")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--force", is_flag=True, help="Replace DIRECTORY if it exists.")
def twin(family_name: str, directory: Path, seed: int, force: bool) -> None:
    """Build a tiny seeded twin of FAMILY (sd1, sd2, sdxl, if, pixart) into DIRECTORY.

    Twins have random weights and the family's real block layout at tiny width: they test
    every code path offline in seconds, but draw noise, not pictures.  A tiny random CLIP
    scorer is written beside the pipeline, in DIRECTORY/scorer, for localization runs.
    """
    from .storage import atomic_dir
    from .models import get_family
    from .models.twin_parts import tiny_clip_model

    family = get_family(family_name)
    if directory.exists() and any(directory.iterdir()) and not force:
        raise click.UsageError(
            f"{directory} exists and is not empty; choose a new folder or pass --force"
        )
    _quiet_libraries()
    with atomic_dir(directory) as tmp:
        family.save_twin(tmp, seed)
        clip, tokenizer = tiny_clip_model(seed)
        clip.save_pretrained(tmp / "scorer")
        tokenizer.save_pretrained(tmp / "scorer")
    click.echo(
        f"wrote a tiny {family.pretty_name} twin to {directory} (scorer: {directory}/scorer)"
    )


def _out_dir(out: Path | None, recipe) -> Path:
    return out if out is not None else Path("out") / recipe.name


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder [default: out/<recipe name>].",
)
@click.option(
    "--fast/--full",
    "fast",
    default=None,
    help="Screen windows cheaply, then re-score the best few (fast), or score every "
    "window at full settings (full) [default: the recipe's localize.mode].",
)
@click.option("--batch", default=8, show_default=True, help="Candidate windows per denoiser call.")
def localize(recipe: Path, out: Path | None, fast: bool | None, batch: int) -> None:
    """LocoGen: find the window of sites that controls the recipe's attribute.

    Writes localization.json (scores of every window, the chosen one, baseline and all-sites
    references) and localization.png.  Finished windows are cached in OUT/cache, so a killed
    run resumes where it stopped.
    """
    from .recipe import load_recipe
    from .stages import run_localize

    loaded = load_recipe(recipe)
    out = _out_dir(out, loaded)
    _quiet_libraries()
    mode = None if fast is None else ("fast" if fast else "full")
    from .distributed import process_group

    group = process_group()
    result = run_localize(loaded, out, mode=mode, batch=batch, group=group)
    if not group.is_main:
        return
    if group.size > 1:
        click.echo(f"windows shared by {group.size} processes")
    click.echo(f"chosen window {result.chosen}: {', '.join(result.layers)}")
    chosen = result.candidates[result.chosen]
    click.echo(
        f"score {chosen.mean:.3f} (baseline {result.baseline.mean:.3f}, "
        f"all sites {result.all_sites.mean:.3f}); wrote {out}/localization.json"
    )


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--layers",
    multiple=True,
    help="Sites to edit (module path or index; repeat or comma-separate). Skips localization.",
)
@click.option(
    "--localization",
    type=click.Path(path_type=Path),
    default=None,
    help="A localization.json whose chosen window to edit.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder [default: out/<recipe name>].",
)
def edit(
    recipe: Path, layers: tuple[str, ...], localization: Path | None, out: Path | None
) -> None:
    """LocoEdit: solve the closed-form key/value edit and write delta.safetensors.

    The sites come from --layers, else --localization, else the recipe's localize.layers;
    with none of them, LocoGen runs first.
    """
    from .recipe import load_recipe
    from .stages import run_edit

    loaded = load_recipe(recipe)
    out = _out_dir(out, loaded)
    _quiet_libraries()
    refs = [part.strip() for item in layers for part in item.split(",") if part.strip()]
    delta, report = run_edit(loaded, out, layers=refs or None, localization=localization)
    worst = max(m["edit_error"] for m in report["modules"].values())
    click.echo(
        f"edited {len(delta.deltas)} matrices at {len(report['layers'])} site(s); "
        f"largest relative edit error {worst:.2e}"
    )
    click.echo(f"wrote {out}/delta.safetensors ({delta.sha256()[:19]}) and {out}/edit.json")


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--top-k",
    default=50,
    show_default=True,
    help="Neurons to override, ranked together over all localized projections.",
)
@click.option("--layers", multiple=True, help="Sites to use (path or index); skips localization.")
@click.option(
    "--localization",
    type=click.Path(path_type=Path),
    default=None,
    help="A localization.json whose chosen window to use.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder [default: out/<recipe name>].",
)
def neurons(
    recipe: Path, top_k: int, layers: tuple[str, ...], localization: Path | None, out: Path | None
) -> None:
    """Neuron-level editing: pick the key/value neurons that carry the attribute.

    Neurons of the localized projections are ranked by Welch's t between the recipe's
    prompts (with the attribute) and its targets and preserve prompts (without); the top-k are
    overridden at inference with their mean on the neutral prompts.  Writes neurons.safetensors.
    """
    from .recipe import load_recipe
    from .stages import run_neurons

    loaded = load_recipe(recipe)
    out = _out_dir(out, loaded)
    _quiet_libraries()
    refs = [part.strip() for item in layers for part in item.split(",") if part.strip()]
    edit = run_neurons(loaded, out, top_k=top_k, layers=refs or None, localization=localization)
    click.echo(
        f"{edit.total()} neurons in {len(edit.overrides)} projection(s); "
        f"wrote {out}/neurons.safetensors"
    )


# the release commands live in their own module; importing it registers them on ``cli``
from . import cli_release  # noqa: E402, F401


def main() -> None:
    """Entry point of the ``locopack`` console script."""
    cli(prog_name="locopack")


if __name__ == "__main__":  # pragma: no cover  (``python -m locopack.cli``)
    from locopack.cli import main as _registered_main  # the module copy the commands joined

    _registered_main()
