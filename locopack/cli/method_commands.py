"""The method's commands: ``localize`` (LocoGen), ``edit`` (LocoEdit), ``neurons``."""

from __future__ import annotations

from pathlib import Path

import click

from .group import quiet_libraries
from .options import layer_refs, mode_option, out_dir, out_option, run_options


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@out_option
@mode_option
@click.option("--batch", default=8, show_default=True, help="Candidate windows per denoiser call.")
@click.option(
    "--full-references",
    is_flag=True,
    help="Score the baseline and all-sites reference lines at full settings "
    "[default: cheap settings; they are only references].",
)
@click.option(
    "--screen-resolution",
    type=click.IntRange(min=8),
    default=None,
    help="Heuristic: run the race's early rounds at this image size (e.g. half the "
    "recipe's), about 4x cheaper per pass at half size; the final round stays at full size.",
)
@click.option(
    "--plan",
    is_flag=True,
    help="Only print what the sweep will cost: denoiser passes of full mode and of the chosen "
    "mode (from the configs), and the time from one timed denoiser pass where the weights "
    "are on this machine; downloads no weights and runs nothing else.",
)
def localize(
    recipe: Path,
    out: Path | None,
    mode: str | None,
    batch: int,
    full_references: bool,
    screen_resolution: int | None,
    plan: bool,
) -> None:
    """LocoGen: find the window of sites that controls the recipe's attribute.

    Writes localization.json (scores of every window, the chosen one, baseline and all-sites
    references) and localization.png.  Finished windows are cached in OUT/cache, so a killed
    run resumes where it stopped.  In fast mode the windows race: rounds with growing steps,
    probes and seeds, each keeping the windows not clearly worse than the best.
    """
    from ..pipeline.lock import build_lock
    from ..pipeline.stages import run_localize
    from ..recipe import load_recipe, preflight

    loaded = load_recipe(recipe)
    preflight(loaded)
    if plan:
        _print_plan(loaded, mode, full_references, batch)
        return
    out = out_dir(out, loaded)
    quiet_libraries()
    options = run_options(
        mode,
        batch=batch,
        full_references=full_references,
        screen_resolution=screen_resolution,
    )
    group = options.processes()
    with build_lock(out, group):
        result = run_localize(loaded, out, options=options)
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
    reused, scored = result.cache_counts()
    click.echo(
        f"sweep {result.timings.get('total', 0.0):.1f} s; {reused} of {scored} scores "
        f"taken from {out}/cache"
    )


def _print_plan(recipe, mode: str | None, full_references: bool, batch: int) -> None:
    """The sweep's cost: passes from the configs; seconds from one timed denoiser pass where
    the weights are on this machine (nothing is downloaded to plan)."""
    from ..localize import plan_sweep, time_denoiser_pass
    from ..pipeline.base import base_layout, load_base

    quiet_libraries()
    layout = base_layout(recipe)
    seconds = None
    if layout.missing is None:
        base = load_base(recipe, allow_pickle=run_options().allow_pickle)
        seconds = time_denoiser_pass(base, recipe.localize.resolution)
    plan = plan_sweep(
        recipe,
        layout.family,
        layout.site_count,
        mode,
        full_references=full_references,
        batch=batch,
        scheduler=layout.scheduler,
        seconds_per_pass=seconds,
    )
    click.echo(plan)
    if seconds is None:
        click.echo(f"(the time needs the weights, which are not here: {layout.missing})")
    else:
        click.echo(f"(one denoiser pass timed here: {seconds * 1000:.0f} ms)")


layers_option = click.option(
    "--layers",
    multiple=True,
    help="Sites to edit (module path or index; repeat or comma-separate). Skips localization.",
)
localization_option = click.option(
    "--localization",
    type=click.Path(path_type=Path),
    default=None,
    help="A localization.json whose chosen window to use.",
)


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@layers_option
@localization_option
@out_option
def edit(
    recipe: Path, layers: tuple[str, ...], localization: Path | None, out: Path | None
) -> None:
    """LocoEdit: solve the closed-form key/value edit and write delta.safetensors.

    The sites come from --layers, else --localization, else the recipe's localize.layers;
    with none of them, LocoGen runs first.
    """
    from ..pipeline.lock import build_lock
    from ..pipeline.stages import run_edit
    from ..recipe.schema import load_recipe

    loaded = load_recipe(recipe)
    out = out_dir(out, loaded)
    quiet_libraries()
    with build_lock(out):
        delta, report = run_edit(
            loaded,
            out,
            layers=layer_refs(layers),
            localization=localization,
            options=run_options(),
        )
    worst = max(m.edit_error for m in report.modules.values())
    click.echo(
        f"edited {len(delta.deltas)} matrices at {len(report.layers)} site(s); "
        f"largest relative edit error {worst:.2e}"
    )
    click.echo(f"wrote {out}/delta.safetensors ({delta.sha256()[:19]}) and {out}/edit.json")


@click.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option(
    "--top-k",
    default=50,
    show_default=True,
    help="Neurons to override, ranked together over all localized projections.",
)
@layers_option
@localization_option
@out_option
def neurons(
    recipe: Path, top_k: int, layers: tuple[str, ...], localization: Path | None, out: Path | None
) -> None:
    """Neuron-level editing: pick the key/value neurons that carry the attribute.

    Neurons of the localized projections are ranked by Welch's t between the recipe's
    prompts (with the attribute) and its targets and preserve prompts (without); the top-k are
    overridden at inference with their mean on the neutral prompts.  Writes neurons.safetensors.
    """
    from ..pipeline.lock import build_lock
    from ..pipeline.stages import run_neurons
    from ..recipe.schema import load_recipe

    loaded = load_recipe(recipe)
    out = out_dir(out, loaded)
    quiet_libraries()
    with build_lock(out):
        edit = run_neurons(
            loaded,
            out,
            top_k=top_k,
            layers=layer_refs(layers),
            localization=localization,
            options=run_options(),
        )
    click.echo(
        f"{edit.total()} neurons in {len(edit.overrides)} projection(s); "
        f"wrote {out}/neurons.safetensors"
    )


COMMANDS = (localize, edit, neurons)
