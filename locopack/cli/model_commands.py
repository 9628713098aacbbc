"""Commands about recipes and models: ``validate``, ``layers``, ``twin``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .group import echo, quiet_libraries
from .options import offline_option


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@offline_option
def validate(recipe: Path, offline: bool) -> None:
    """Check RECIPE without running any model, and print a summary.

    Beyond the schema: local model and scorer folders exist with the right layout, Hub ids are
    well-formed (and exist, unless --offline), the window and any explicit layers fit the
    model's sites (read from its configs), concepts appear in the prompts their token rule
    needs, and prompts pair with their targets.  `build` runs the same checks first.
    Exits 1 with every problem (file, line, field) on errors.
    """
    from ..recipe import load_recipe, preflight, summarize

    loaded = load_recipe(recipe)
    preflight(loaded, offline=offline)
    if loaded.edit.robust is not None:  # its attacks' names (imported only when needed)
        from ..pipeline.robust_erase import check_robust

        check_robust(loaded)
    echo(summarize(loaded))
    echo("recipe is valid")


@click.command()
@click.argument("model")
@click.option("--revision", default=None, help="Branch, tag or commit of a Hub model.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def layers(model: str, revision: str | None, as_json: bool) -> None:
    """List MODEL's text-conditioning sites in network execution order.

    MODEL is a local pipeline folder or a Hub id (org/name).  Only the configs are read: the
    denoiser is built without weights, so this is fast even for large models.
    """
    from ..models import load_denoiser_layout

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
    click.echo(f"{'#':>3}  {'site':<{width}}  key/value, kind")
    for s in sites:
        proj = f"{s.key.rsplit('.', 1)[1]}/{s.value.rsplit('.', 1)[1]}"
        dims = f"{s.in_features} -> {s.out_features}"
        click.echo(f"{s.index:>3}  {s.path:<{width}}  {proj} {dims}, {s.kind}")
    note = family.layers_note()
    if note:
        click.echo(f"note: {note}")


@click.command()
@click.argument("family_name", metavar="FAMILY")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--force", is_flag=True, help="Replace DIRECTORY if it exists.")
def twin(family_name: str, directory: Path, seed: int, force: bool) -> None:
    """Build a tiny seeded twin of FAMILY into DIRECTORY.

    FAMILY: sd1, sd2, sdxl, if, pixart, sd3, flux, flux2, z-image, lumina2, sana, chroma or
    qwen-image.

    Twins have random weights and the family's real block layout at tiny width: they test
    every code path offline in seconds, but draw noise, not pictures.  A tiny random CLIP
    scorer is written beside the pipeline, in DIRECTORY/scorer, for localization runs.
    """
    from ..models import get_family
    from ..models.twin_parts import tiny_clip_model
    from ..storage import atomic_dir

    family = get_family(family_name)
    if directory.exists() and any(directory.iterdir()) and not force:
        raise click.UsageError(
            f"{directory} exists and is not empty; choose a new folder or pass --force"
        )
    quiet_libraries()
    with atomic_dir(directory) as tmp:
        family.save_twin(tmp, seed)
        clip, tokenizer = tiny_clip_model(seed)
        clip.save_pretrained(tmp / "scorer")
        tokenizer.save_pretrained(tmp / "scorer")
    click.echo(
        f"wrote a tiny {family.pretty_name} twin to {directory} (scorer: {directory}/scorer)"
    )


COMMANDS = (validate, layers, twin)
