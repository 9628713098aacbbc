"""The ``locopack`` command line: parse arguments, call the library, report errors in one line.

The library raises :class:`~locopack.errors.LocopackError`; :func:`main` turns it into
``error: <message>`` on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import json
import os
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
def cli(threads: int | None) -> None:
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


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
def validate(recipe: Path) -> None:
    """Check RECIPE against the schema and print a summary.

    When the recipe's base model is a local folder, the localization window and any explicit
    layers are also checked against the model's text-conditioning sites.  Exits 1 on errors.
    """
    from .recipe import check_against_model, load_recipe, summarize

    loaded = load_recipe(recipe)
    if Path(loaded.base.model).is_dir():
        from .models import load_denoiser_layout

        family, denoiser = load_denoiser_layout(loaded.base.model, loaded.base.revision)
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
    from .io import atomic_dir
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

    result = run_localize(loaded, out, mode=mode, batch=batch)
    if not process_group().is_main:
        return
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


@cli.command("export")
@click.argument("delta", type=click.Path(path_type=Path))
@click.option(
    "--adapter/--no-adapter",
    default=True,
    show_default=True,
    help="diffusers/PEFT LoRA: pytorch_lora_weights.safetensors + lora_manifest.json.",
)
@click.option("--kohya", is_flag=True, help="kohya LoRA file for ComfyUI / AUTOMATIC1111.")
@click.option("--merged", is_flag=True, help="Full pipeline folder with the edit merged (merged/).")
@click.option("--onnx", is_flag=True, help="Edited denoiser as ONNX (onnx/; needs [onnx] extra).")
@click.option("--max-rank", default=64, show_default=True, help="Largest LoRA rank per module.")
@click.option(
    "--energy",
    default=0.99999999,
    show_default=True,
    help="Share of each delta's squared Frobenius norm the LoRA keeps.",
)
@click.option("--model", default=None, help="Base model to merge into [default: the recorded one].")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
def export_cmd(
    delta: Path,
    adapter: bool,
    kohya: bool,
    merged: bool,
    onnx: bool,
    max_rank: int,
    energy: float,
    model: str | None,
    out: Path,
) -> None:
    """Export DELTA (a delta.safetensors written by `locopack edit`) for inference."""
    from .stages import run_export

    _quiet_libraries()
    written = run_export(
        delta,
        out,
        adapter=adapter,
        kohya=kohya,
        merged=merged,
        onnx=onnx,
        max_rank=max_rank,
        energy=energy,
        model=model,
    )
    if "manifest" in written:
        manifest = written.pop("manifest")
        ranks = sorted({m["rank"] for m in manifest["modules"].values()})
        click.echo(
            f"adapter: {len(manifest['modules'])} modules, ranks {ranks}, "
            f"max relative error {manifest['max_relative_error']:.1e}"
        )
    for what, path in written.items():
        click.echo(f"wrote {what}: {path}")


@cli.command()
@click.option("--model", required=True, help="Pipeline folder or Hub id.")
@click.option("--adapter", default=None, help="Release folder or adapter/neuron file to apply.")
@click.option("--scale", default=1.0, show_default=True, help="Strength of the applied edit.")
@click.option("--force", is_flag=True, help="Apply even if the edit was made for another base.")
@click.option("--prompt", required=True, help="Text prompt.")
@click.option("--seed", default=0, show_default=True)
@click.option("--steps", default=25, show_default=True)
@click.option("--guidance", default=7.5, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Image file (.png).")
def generate(
    model: str,
    adapter: str | None,
    scale: float,
    force: bool,
    prompt: str,
    seed: int,
    steps: int,
    guidance: float,
    out: Path,
) -> None:
    """Generate one image with MODEL, optionally with an edit applied."""
    import torch

    from .inference import apply
    from .io import atomic_write_bytes
    from .models import load_pipeline

    _quiet_libraries()
    revision = None
    if "@" in model and not Path(model).exists():
        from .hub import parse_ref

        model, revision = parse_ref(model)
    pipe, family = load_pipeline(model, revision)
    if adapter:
        apply(pipe, adapter, scale, force=force)
    generator = torch.Generator(pipe.device).manual_seed(seed)
    image = pipe(
        prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generator,
        **family.call_kwargs(),
    ).images[0]
    import io as _io

    buffer = _io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(out, buffer.getvalue())
    click.echo(f"wrote {out}")


def _recipe_files(paths: tuple[Path, ...]) -> list[Path]:
    files = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml"))
            if not found:
                raise click.UsageError(f"{path}: a folder without any .yaml recipe")
            files += found
        else:
            files.append(path)
    return files


def _echo_summary(summary, out: Path) -> None:
    click.echo(f"\nlayers: {', '.join(summary.layers)}")
    for edit in summary.evidence.get("edits", []):
        for name, item in edit["sets"].items():
            before, after = item["summary"]["before"], item["summary"]["after"]
            click.echo(
                f"  {edit['label']} / {name}: CLIP to original "
                f"{before['original']['mean']:.2f} -> {after['original']['mean']:.2f}, "
                f"to target {before['target']['mean']:.2f} -> {after['target']['mean']:.2f}"
            )
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in summary.seconds.items())
    click.echo(f"time: {stages}; total {sum(summary.seconds.values()):.1f}s")
    click.echo(f"wrote {len(summary.files)} files to {out} (model card: {out}/README.md)")


@cli.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder [default: out/<recipe name>]; with several recipes, the parent of "
    "one folder per recipe [default: out/].",
)
@click.option(
    "--fast/--full",
    "fast",
    default=None,
    help="Localization mode [default: the recipe's localize.mode].",
)
def build(recipes: tuple[Path, ...], out: Path | None, fast: bool | None) -> None:
    """Recipe in, release out: localize, edit, export, evidence, card, history.

    RECIPES: one recipe, several, or folders of recipes.  Rerun after a crash to continue:
    finished stages and localization windows are reused.  Under `accelerate launch`, one
    recipe's localization sweep is shared by all processes; several recipes are spread over
    the processes, each built exactly as when built alone.
    """
    from .build import run_build
    from .distributed import ProcessGroup, process_group
    from .recipe import load_recipe

    files = _recipe_files(recipes)
    loaded = [load_recipe(path) for path in files]  # every recipe is checked before any work
    _quiet_libraries()
    mode = None if fast is None else ("fast" if fast else "full")
    group = process_group()
    if len(loaded) == 1:
        target = _out_dir(out, loaded[0])
        summary = run_build(loaded[0], target, mode=mode, group=group)
        if summary is not None:
            _echo_summary(summary, target)
        return
    failures = []
    for recipe in group.share(loaded):
        target = (out or Path("out")) / recipe.name
        try:
            summary = run_build(recipe, target, mode=mode, group=ProcessGroup())
        except LocopackError as err:
            failures.append(f"{recipe.source}: {err}")
            continue
        _echo_summary(summary, target)
    if failures:
        raise _UserError(f"{len(failures)} recipe(s) failed:\n" + "\n".join(failures))


@cli.command()
@click.argument("outdir", type=click.Path(path_type=Path))
def card(outdir: Path) -> None:
    """Rebuild OUTDIR/README.md (the model card) from an output folder, computing nothing."""
    from .card import write_card

    path = write_card(outdir)
    click.echo(f"wrote {path}")


@cli.command()
@click.argument("release")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--reproduce",
    is_flag=True,
    help="Also re-run the recorded recipe on the recorded base and compare the delta.",
)
def audit(release: str, as_json: bool, reproduce: bool) -> None:
    """Verify RELEASE (a folder or ORG/NAME[@REV] on the Hub): file hashes, history chain,
    adapter vs delta, merged = base + delta.

    Exits 1 when any check fails, naming the file or history entry.
    """
    from .audit import audit_folder, timeline

    if reproduce:
        _quiet_libraries()
    folder = Path(release)
    if not folder.exists():
        from .hub import is_hub_ref, resolve_release

        if not is_hub_ref(release):
            raise click.UsageError(f"{release}: neither a folder nor a Hub ref ORG/NAME[@REV]")
        folder = resolve_release(release)
    report = audit_folder(folder, reproduce=reproduce)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(timeline(report))
        for check in report.checks:
            click.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    if not report.ok:
        failed = next(c for c in report.checks if not c.ok)
        raise _UserError(f"audit failed: {failed.name}: {failed.detail}")


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--repo", default=None, help="ORG/NAME on the Hub [default: the recipe's hub.repo].")
@click.option(
    "--private/--public",
    default=None,
    help="Visibility of a repo created by this push [default: the recipe's hub.private].",
)
@click.option("--branch", default=None, help="Branch to commit to [default: recipe's hub.branch].")
@click.option("--tag", default=None, help="Tag of the commit [default: <recipe name>-<hash[:12]>].")
@click.option("--message", default=None, help="Extra text for the commit title.")
def push(
    folder: Path,
    repo: str | None,
    private: bool | None,
    branch: str | None,
    tag: str | None,
    message: str | None,
) -> None:
    """Upload the release FOLDER to the Hugging Face Hub as one tagged commit.

    The token comes from HF_TOKEN or `hf auth login`.  Files on the branch that FOLDER no
    longer has are removed in the same commit, so the tag names exactly this release.
    """
    from .hub import push as push_release
    from .recipe import load_recipe

    if (folder / "recipe.yaml").is_file():  # else push_release says what is missing
        settings = load_recipe(folder / "recipe.yaml").hub
        repo, branch = repo or settings.repo, branch or settings.branch
        private = settings.private if private is None else private
        if not repo:
            raise click.UsageError("no repo: pass --repo ORG/NAME or set hub.repo in the recipe")
    result = push_release(
        folder, repo or "", private=private is not False, branch=branch, tag=tag, message=message
    )
    state = "pushed" if result.created else "already on the Hub:"
    click.echo(f"{state} {folder} -> {result.url} (commit {result.commit[:12]}, tag {result.tag})")


def main() -> None:
    """Entry point of the ``locopack`` console script."""
    cli(prog_name="locopack")


if __name__ == "__main__":  # pragma: no cover
    main()
