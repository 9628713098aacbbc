"""The release commands of the ``locopack`` CLI: export, generate, build, card, audit, push.

Added to the group by :mod:`locopack.cli`; like every command, they only parse arguments,
call the library and report.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import LocopackError
from ..filenames import RECIPE_FILE
from .group import UnmetError, UserError, echo, global_options, quiet_libraries
from .options import (
    FormatsCommand,
    allow_unmet_option,
    chosen_formats,
    mode_option,
    offline_option,
    out_dir,
    run_options,
    sign_key_option,
    trust_options,
    trusted_keys,
)
from .sign_commands import sign_built, signing_key

if TYPE_CHECKING:
    from ..recipe.schema import Recipe


@click.command("export", cls=FormatsCommand)
@click.argument("delta", type=click.Path(path_type=Path))
@click.option("--max-rank", default=64, show_default=True, help="Largest LoRA rank per module.")
@click.option(
    "--energy",
    default=0.99999999,
    show_default=True,
    help="Share of each delta's squared Frobenius norm the LoRA keeps.",
)
@click.option("--model", default=None, help="Base model to merge into [default: the recorded one].")
@click.option("--force", is_flag=True, help="Merge even into a model the delta was not made for.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
def export_cmd(
    delta: Path,
    max_rank: int,
    energy: float,
    model: str | None,
    force: bool,
    out: Path,
    **formats: bool,
) -> None:
    """Export DELTA (a delta.safetensors written by `locopack edit`) for inference, in the
    formats asked for (one option per registered format).

    Every format asked for is checked against the delta's model family first: one it cannot
    have is refused, naming it, before anything is written.
    """
    from ..pipeline.exports import ExportChoice, run_export

    quiet_libraries()
    choice = ExportChoice.from_flags(chosen_formats(formats), max_rank, energy)
    written = run_export(
        delta,
        out,
        choice,
        model=model,
        force=force,
        allow_pickle=global_options().allow_pickle,
    )
    if "manifest" in written:
        manifest = written.pop("manifest")
        ranks = sorted({m.rank for m in manifest.modules.values()})
        click.echo(
            f"adapter: {len(manifest.modules)} modules, ranks {ranks}, "
            f"max relative error {manifest.max_relative_error:.1e}"
        )
    for what, path in written.items():
        click.echo(f"wrote {what}: {path}")


@click.command()
@click.option(
    "--model",
    required=True,
    help="Pipeline folder or Hub id[@REVISION], or a release (folder or ORG/NAME[@REVISION]) "
    "with a merged checkpoint.",
)
@click.option("--adapter", default=None, help="Release folder or adapter/neuron file to apply.")
@click.option("--scale", default=1.0, show_default=True, help="Strength of the applied edit.")
@click.option("--force", is_flag=True, help="Apply even if the edit was made for another base.")
@click.option("--prompt", required=True, help="Text prompt.")
@click.option("--seed", default=0, show_default=True)
@click.option("--steps", default=25, show_default=True)
@click.option("--guidance", default=7.5, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Image file (.png).")
@trust_options
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
    **trust,
) -> None:
    """Generate one image with MODEL, optionally with an edit applied.

    With --public-key (or --certificate-chain, or a Sigstore identity), a release given as
    MODEL or --adapter is used only if its signature verifies against it.
    """
    import torch

    from ..hub.apply import apply, load_for_inference
    from ..storage import atomic_write_bytes

    quiet_libraries()
    trusted = trusted_keys(**trust)
    base = load_for_inference(model, allow_pickle=global_options().allow_pickle, trusted=trusted)
    pipe, family = base.pipe, base.family
    if adapter:
        apply(pipe, adapter, scale, force=force, trusted=trusted)
    generator = torch.Generator(pipe.device).manual_seed(seed)
    image = pipe(
        prompt=prompt,
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


def _check_folders_free(loaded: list, out: Path | None) -> None:
    """Fail when another build holds the output folder of a recipe this process builds (the
    main process's one folder, or this process's share of several)."""
    from ..distributed import process_group
    from ..pipeline.lock import check_free

    group = process_group()
    if len(loaded) == 1:
        targets = [out_dir(out, loaded[0])] if group.is_main else []
    else:
        targets = [(out or Path("out")) / recipe.name for recipe in group.share(loaded)]
    for target in targets:
        check_free(target)


def _echo_summary(summary, out: Path) -> None:
    echo(f"\nlayers: {', '.join(summary.layers)}")
    for edit in summary.evidence.get("edits", []):
        for name, item in edit["sets"].items():
            before, after = item["summary"]["before"], item["summary"]["after"]
            echo(
                f"  {edit['label']} / {name}: CLIP to original "
                f"{before['original']['mean']:.2f} -> {after['original']['mean']:.2f}, "
                f"to target {before['target']['mean']:.2f} -> {after['target']['mean']:.2f}"
            )
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in summary.seconds.items())
    echo(f"time: {stages}; total {sum(summary.seconds.values()):.1f}s")
    echo(f"wrote {len(summary.files)} files to {out} (model card: {out}/README.md)")
    from ..evidence.verdict import judged_count

    verdict = summary.requirements
    if verdict["met"]:
        echo(f"requirements: met ({judged_count(verdict)} checks)")
    else:
        echo("requirements: NOT met: " + "; ".join(verdict["unmet"]))


def _unmet(summary, out: Path, allow_unmet: bool) -> UnmetError | None:
    """The error a build ends with when its release misses its requirements, unless allowed."""
    if summary.requirements["met"]:
        return None
    if allow_unmet:
        echo(f"warning: {out} misses its requirements; built with --allow-unmet, as its card says")
        return None
    return UnmetError(
        f"{out} does not meet its requirements ({'; '.join(summary.requirements['unmet'])}); "
        "it is built but must not be published: change the recipe, or rebuild with "
        "--allow-unmet to publish it anyway (the card and history then say so)"
    )


@click.command()
@click.argument("recipes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder [default: out/<recipe name>]; with several recipes, the parent of "
    "one folder per recipe [default: out/].",
)
@mode_option
@click.option(
    "--push",
    "push_to",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[ORG/NAME]",
    help="Then push the release to the Hub as one tagged commit (`--push` alone: the "
    "recipe's hub.repo); see `locopack push --help`.",
)
@click.option(
    "--private/--public",
    default=None,
    help="With --push: visibility of a repo it creates [default: the recipe's hub.private].",
)
@click.option("--tag", default=None, help="With --push: the tag [default: <name>-<hash[:12]>].")
@click.option(
    "--replace",
    "replace_release",
    is_flag=True,
    help="When the output folder holds the release of another recipe, remove exactly the files "
    "its history recorded, then build (without it, such a folder is refused).  A file no "
    "build recorded, or changed since, is never removed: it stops the build, named.",
)
@allow_unmet_option
@offline_option
@sign_key_option
def build(
    recipes: tuple[Path, ...],
    out: Path | None,
    mode: str | None,
    push_to: str | None,
    private: bool | None,
    tag: str | None,
    replace_release: bool,
    allow_unmet: bool,
    offline: bool,
    sign_key: Path | None,
) -> None:
    """Recipe in, release out: localize, edit, export, evidence, card, history (, push).

    A release that misses its recipe's requirements is built, and its card says what it
    missed, but the command exits with status 3 and `--push` uploads nothing, unless
    --allow-unmet.

    RECIPES: one recipe, several, or folders of recipes.  Rerun after a crash to continue:
    finished stages and localization windows are reused.  A folder holding another recipe's
    release is refused unless --replace; a symbolic link in the folder always is.  Under
    `accelerate launch`, one
    recipe's localization sweep is shared by all processes; several recipes are spread over
    the processes, each built exactly as when built alone.
    """
    from ..distributed import ProcessGroup
    from ..recipe import load_recipe, preflight

    files = _recipe_files(recipes)
    loaded = [load_recipe(path) for path in files]
    _check_folders_free(loaded, out)  # before the heavy imports: a second build fails at once
    from ..pipeline.build import run_build
    from ..pipeline.stages import warn_about_local_paths

    for recipe in loaded:  # every recipe is checked before any model is loaded or run
        preflight(recipe, offline=offline)
        warn_about_local_paths(recipe)
    if push_to is not None and len(loaded) > 1:
        raise click.UsageError("--push takes one recipe; push each release with `locopack push`")
    if push_to == "" and not loaded[0].hub.repo:
        raise click.UsageError("--push: name ORG/NAME or set hub.repo in the recipe")
    signer = signing_key(sign_key)  # an unreadable key fails before the build, not after
    quiet_libraries()
    options = run_options(mode)
    if len(loaded) == 1:
        target = out_dir(out, loaded[0])
        summary = run_build(
            loaded[0],
            target,
            options=options,
            echo=echo,
            replace=replace_release,
            allow_unmet=allow_unmet,
        )
        if summary is not None:
            _echo_summary(summary, target)
            unmet = _unmet(summary, target, allow_unmet)
            if unmet:
                raise unmet
            sign_built(target, signer, loaded[0])
            if push_to is not None:
                _push_folder(
                    target,
                    push_to or None,
                    private,
                    tag=tag,
                    allow_unmet=allow_unmet,
                    recipe=loaded[0],
                )
        return
    failures, misses = [], []
    alone = replace(options, group=ProcessGroup())
    for recipe in options.processes().share(loaded):
        target = (out or Path("out")) / recipe.name
        try:
            summary = run_build(
                recipe,
                target,
                options=alone,
                echo=echo,
                replace=replace_release,
                allow_unmet=allow_unmet,
            )
        except LocopackError as err:
            failures.append(f"{recipe.source}: {err}")
            continue
        _echo_summary(summary, target)
        unmet = _unmet(summary, target, allow_unmet)
        misses += [f"{recipe.source}: {unmet.message}"] if unmet else []
        if not unmet:
            sign_built(target, signer, recipe)
    if failures:
        raise UserError(f"{len(failures)} recipe(s) failed:\n" + "\n".join(failures + misses))
    if misses:
        raise UnmetError(f"{len(misses)} release(s) miss their requirements:\n" + "\n".join(misses))


@click.command()
@click.argument("outdir", type=click.Path(path_type=Path))
def card(outdir: Path) -> None:
    """Rebuild OUTDIR/README.md (the model card) from an output folder, computing nothing."""
    from ..pipeline.lock import build_lock
    from ..release.card import write_card

    if not outdir.is_dir():  # the lock would create it
        raise UserError(f"{outdir}: no such folder")
    with build_lock(outdir, command="card"):
        path = write_card(outdir)
    click.echo(f"wrote {path}")


@click.command()
@click.argument("release")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--reproduce",
    type=click.Choice(["full", "quick"]),
    is_flag=False,
    flag_value="full",
    default=None,
    help="Also re-run the recorded recipe on its base: `full` (alone: --reproduce) re-runs "
    "LocoGen and LocoEdit and requires the same scores, window and delta; `quick` re-runs "
    "only LocoEdit at the recorded window.",
)
@click.option(
    "--base",
    default=None,
    help="The base model (folder or Hub id) when it is not where the release records it, "
    "e.g. after the release was copied elsewhere.",
)
@click.option(
    "--scorer",
    default=None,
    help="The CLIP scorer folder for --reproduce full, when not where the release records it.",
)
@trust_options
def audit(
    release: str,
    as_json: bool,
    reproduce: str | None,
    base: str | None,
    scorer: str | None,
    **trust,
) -> None:
    """Verify RELEASE (a folder or ORG/NAME[@REV] on the Hub): file hashes, history chain,
    signature and provenance, adapter vs delta, merged = base + delta, and optionally a re-run
    of the recipe.  Without --public-key (or --certificate-chain, or a Sigstore identity) the
    signature is reported, not required.

    Exits 1 when any check fails, naming the file or history entry.
    """
    from ..hub_ref import is_hub_ref
    from ..pipeline.reproduce import Reproduce
    from ..release.audit import audit_folder, timeline

    if reproduce:
        quiet_libraries()
    folder = Path(release)
    snapshot = not folder.exists()  # a download: the Hub client's links into its cache
    if snapshot:
        from ..hub.pull import resolve_release

        if not is_hub_ref(release):
            raise click.UsageError(f"{release}: neither a folder nor a Hub ref ORG/NAME[@REV]")
        folder = resolve_release(release)
    report = audit_folder(
        folder,
        snapshot=snapshot,
        reproduce=Reproduce(reproduce) if reproduce else None,
        base=base,
        scorer=scorer,
        allow_pickle=global_options().allow_pickle,
        trusted=trusted_keys(**trust),
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        echo(timeline(report))
        for check in report.checks:
            echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    if not report.ok:
        failed = next(c for c in report.checks if not c.ok)
        raise UserError(f"audit failed: {failed.name}: {failed.detail}")


@click.command()
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
@allow_unmet_option
@sign_key_option
def push(
    folder: Path,
    repo: str | None,
    private: bool | None,
    branch: str | None,
    tag: str | None,
    message: str | None,
    allow_unmet: bool,
    sign_key: Path | None,
) -> None:
    """Upload the release FOLDER to the Hugging Face Hub as one tagged commit.

    The token comes from HF_TOKEN or `hf auth login`.  Files on the branch that FOLDER no
    longer has are removed in the same commit, so the tag names exactly this release.  A
    release that fails `locopack audit`, or misses its recipe's requirements, is refused
    (the latter unless built and pushed with --allow-unmet).  With --sign-key the release is
    signed first, and its signature and provenance go up in the same commit.
    """
    key = signing_key(sign_key)
    if key is not None and folder.is_dir():
        sign_built(folder, key)
    _push_folder(folder, repo, private, branch, tag, message, allow_unmet)


def _push_folder(
    folder: Path,
    repo: str | None,
    private: bool | None,
    branch: str | None = None,
    tag: str | None = None,
    message: str | None = None,
    allow_unmet: bool = False,
    recipe: Recipe | None = None,
) -> None:
    """Push a release; unset settings come from its recipe's ``hub`` section (``recipe``: the
    one the command built it from, else read from the folder, once)."""
    from ..hub.push import push as push_release
    from ..release.layout import release_recipe

    if (folder / RECIPE_FILE).is_file():  # else push_release says what is missing
        recipe = release_recipe(folder, recipe)
        settings = recipe.hub
        repo, branch = repo or settings.repo, branch or settings.branch
        private = settings.private if private is None else private
        if not repo:
            raise click.UsageError("no repo: pass --repo ORG/NAME or set hub.repo in the recipe")
    result = push_release(
        folder,
        repo or "",
        private=private is not False,
        branch=branch,
        tag=tag,
        message=message,
        allow_unmet=allow_unmet,
        recipe=recipe,
    )
    state = "pushed" if result.created else "already on the Hub:"
    echo(f"{state} {folder} -> {result.url} (commit {result.commit[:12]}, tag {result.tag})")


COMMANDS = (export_cmd, generate, build, card, audit, push)
