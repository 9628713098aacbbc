"""``locopack build``: recipe in, release out.

localize → edit → export → evidence → card → history, into one output folder, which the build
holds locked (:mod:`.lock`): a second build into it fails at once, naming the first.

Everything is checked before the expensive work: the recipe (``preflight``, by the command),
then the loaded base (finite weights; a release's merged checkpoint must still hold the files
its history recorded).  Each stage writes its files atomically, and a rerun after a crash:

- removes the temporary files that interrupted writes left
  (:func:`~locopack.storage.remove_leftovers`);
- reuses ``delta.safetensors`` when it was made from the same recipe on the same base: the
  localize and edit stages are skipped (otherwise the sweep resumes inside its cache);
- writes the exports again from the delta (they are quick, and always match it);
- reuses the evidence when ``evidence.json`` is complete and was drawn from the same inputs
  (recipe, base, delta, adapter; see :func:`~locopack.evidence.before_after.evidence_inputs`);
- writes the card and the history again (instant).

Every stage prints ``[k/6] NAME done in S s`` or ``[k/6] NAME: reused (why)``.  A full disk, a
missing permission or memory running out ends the build with one line naming the stage and
the path (:mod:`.resources`); what was finished is kept for the rerun.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..delta import WeightDelta
from ..distributed import gather
from ..errors import ExportError, LocopackError, ModelLayoutError
from ..models.loaded import LoadedBase
from ..record import JsonObject
from ..release.layout import (
    DELTA_FILE,
    HISTORY_FILE,
    PROVENANCE_FILE,
    RECIPE_FILE,
    SIGNATURE_FILE,
    is_record,
    release_files,
    sha256_file,
)
from ..secret_scan import check_folder
from ..storage import remove_leftovers
from .base import changed_file, load_base
from .exports import ExportChoice, export_delta
from .lock import BuildHolder, build_lock
from .resources import resource_errors
from .stages import (
    DEFAULT_OPTIONS,
    RunOptions,
    compute_edit,
    layers_or_localize,
    save_edit,
    scorer_for,
    write_recipe_copy,
)

if TYPE_CHECKING:
    from ..recipe.schema import Recipe
    from ..release.records.history import HistoryEntry

STAGES = ("localize", "edit", "export", "evidence", "card", "history")


@dataclass
class BuildSummary:
    """What a build did: chosen layers, seconds per stage, evidence headline, files, and the
    stages it reused from an earlier run."""

    out: Path
    layers: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    evidence: JsonObject = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def requirements(self) -> JsonObject:
        """The verdict on the recipe's requirements (``evidence.json``'s section)."""
        return self.evidence.get("requirements") or {"met": True, "unmet": [], "items": []}


class _StageLog:
    """Times the stages, reports each as done or reused, and knows which one is running."""

    def __init__(self, summary: BuildSummary, echo: Callable[[str], object]):
        self.summary, self.echo = summary, echo
        self.clock = time.perf_counter()
        self.current = "load"  # loading the base, before the first stage

    def done(self, name: str, reused: str | None = None) -> None:
        now = time.perf_counter()
        self.summary.seconds[name] = now - self.clock
        self.clock = now
        number = f"[{len(self.summary.seconds)}/{len(STAGES)}] {name}"
        if reused:
            self.summary.skipped.append(name)
            self.echo(f"{number}: reused ({reused})")
        else:
            self.echo(f"{number} done in {self.summary.seconds[name]:.1f} s")
        following = STAGES.index(name) + 1
        self.current = STAGES[following] if following < len(STAGES) else "finish"


def _tidy(
    out: Path,
    recipe: Recipe,
    killed: BuildHolder,
    echo: Callable[[str], object],
    replace: bool,
) -> None:
    """Before the build: say that a killed build is resumed, remove what interrupted writes
    left, and check what else the folder holds (:func:`_clear_another_build`)."""
    if killed:
        echo(
            f"{out}: resuming the build (pid {killed.get('pid')}, started "
            f"{killed.get('started')}) that ended without finishing"
        )
    left = remove_leftovers(out)
    if left:
        echo(f"{out}: removed {len(left)} temporary file(s) of interrupted writes")
    _clear_another_build(out, recipe, echo, replace)


def _names(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _clear_another_build(
    out: Path, recipe: Recipe, echo: Callable[[str], object], replace: bool
) -> None:
    """Make sure that nothing in ``out`` but this recipe's own outputs becomes part of its
    release (an old merged checkpoint, extra evidence, a file of the user's).

    A folder with the files of another recipe's release is refused unless ``replace``; then
    exactly the files that release's history recorded are removed (a file the user added, or
    changed since, is never removed: it stops the build, named).  A folder holding files no
    build recorded is refused.  ``cache/`` and hidden files stay: they are never released.

    Raises:
        ExportError: naming the files, and what to do.
    """
    from ..release.history import read_history

    present = release_files(out)
    copy = out / RECIPE_FILE
    if not present or (copy.is_file() and copy.read_text(encoding="utf-8") == recipe.source_text):
        return  # a new folder, or this recipe's own build to resume
    entries = read_history(out / HISTORY_FILE)
    recorded = entries[-1].files if entries else {}
    if not recorded:
        raise ExportError(
            f"{out}: holds files that no {HISTORY_FILE} records ({_names(present)}); nothing "
            "was removed: move them out of the folder, or build into another --out"
        )
    earlier = f"the release of recipe {entries[-1].recipe_name!r}"
    foreign = [
        name
        for name in present
        if not is_record(name) and recorded.get(name) != sha256_file(out / name)
    ]
    if foreign:
        raise ExportError(
            f"{out}: holds {earlier} and files it did not record, or that changed since "
            f"({_names(foreign)}); nothing was removed: move those out of the folder, or build "
            "into another --out"
        )
    if not replace:
        raise ExportError(
            f"{out}: holds {earlier} ({len(present)} files); pass --replace to remove exactly "
            "its recorded files first, or build into another --out"
        )
    for name in present:
        (out / name).unlink()
    for folder in sorted({p for n in present for p in Path(n).parents[:-1]}, reverse=True):
        with contextlib.suppress(OSError):  # a folder that still holds a local file stays
            (out / folder).rmdir()
    kept = sorted(p.name for p in out.iterdir())
    echo(
        f"{out}: removed the {len(present)} files of {earlier} (--replace)"
        + (f"; kept {', '.join(kept)}, which is never released" if kept else "")
    )


def _reusable_delta(path: Path, recipe: Recipe, base: LoadedBase) -> WeightDelta | None:
    if not path.is_file():
        return None
    try:
        delta = WeightDelta.load(path)
    except LocopackError:  # damaged or not finite: redone
        return None
    prov = delta.provenance
    same = prov.recipe_sha256 == recipe.sha256 and prov.base_fingerprint == base.fingerprint
    return delta if same and delta.sites else None


def _check_recorded_base(base: LoadedBase, previous: list[HistoryEntry]) -> None:
    """Refuse a base that is a release's merged checkpoint no longer holding what its history
    recorded (damaged or altered weights the fingerprint does not cover)."""
    folder = Path(base.source)  # also a Hub release's downloaded merged/
    changed = changed_file(folder, previous[-1]) if previous and folder.is_dir() else None
    if changed:
        raise ModelLayoutError(
            f"the base {base.source} differs from the release that recorded it ({changed}); "
            "re-download or rebuild it"
        )


def run_build(
    recipe: Recipe,
    out: Path,
    *,
    options: RunOptions = DEFAULT_OPTIONS,
    echo: Callable[[str], object] = print,
    replace: bool = False,
    allow_unmet: bool = False,
) -> BuildSummary | None:
    """Build the release of ``recipe`` into ``out``; see the module docstring.

    ``replace``: remove the files of another recipe's release in ``out`` first (exactly those
    its history recorded); without it such a folder is refused.  ``allow_unmet``: the release
    is meant to be published even if it misses its requirements; the card and the history
    say so.  Either way the summary's ``requirements`` holds the verdict.

    The processes of ``options.group`` share the localization sweep; only the main one holds
    the folder's lock, goes on to the later stages and returns a summary, the others return
    None.

    Raises:
        FolderLockedError: another command is writing into ``out``.
        ExportError: ``out`` holds a symbolic link, another recipe's release (without
            ``replace``), or files no build recorded.
        ResourceError: the disk filled up, a file could not be written, or memory ran out.
        LocopackError: any other failure of a stage, in its own words.
    """
    group = options.processes()
    options = dataclasses.replace(options, progress=options.progress and group.is_main, group=group)
    summary = BuildSummary(out)
    log = _StageLog(summary, echo)
    with resource_errors(out, lambda: log.current), build_lock(out, group) as killed:
        refused = None
        if group.is_main:
            try:
                _tidy(out, recipe, killed, echo, replace)
            except ExportError as err:
                refused = str(err)
        # nothing is written before the main process has tidied up; all stop if it refused
        refused = gather(group, refused)[0]
        if refused:
            raise ExportError(refused)
        return _build(recipe, out, options, summary, log, allow_unmet)


def _build(
    recipe: Recipe,
    out: Path,
    options: RunOptions,
    summary: BuildSummary,
    log: _StageLog,
    allow_unmet: bool,
) -> BuildSummary | None:
    from ..evidence.before_after import (
        check_detectors,
        collect_evidence,
        evidence_inputs,
        reusable_evidence,
    )
    from ..release.card import write_card
    from ..release.history import new_entry, prior_history, write_history
    from .robust_erase import check_robust

    check_detectors(recipe)  # a detector that cannot load fails now, not after the edit
    check_robust(recipe)
    base = load_base(recipe, allow_pickle=options.allow_pickle)
    previous = prior_history(base.source, base.commit or base.revision)
    _check_recorded_base(base, previous)
    log.current = STAGES[0]
    write_recipe_copy(recipe, out)
    delta = _reusable_delta(out / DELTA_FILE, recipe, base)
    if delta is None:
        summary.layers = layers_or_localize(recipe, base, out, options=options)
    else:
        summary.layers = delta.sites
    if not options.group.is_main:
        return None
    reused = f"{DELTA_FILE} is complete for this recipe and base" if delta else None
    log.done("localize", reused)
    if delta is None:
        delta = compute_edit(recipe, base, summary.layers, out)
        save_edit(recipe, base, delta, out)
    log.done("edit", reused)
    choice = ExportChoice.from_recipe(recipe.export, base.family)
    manifest = export_delta(delta, out, choice, base)["manifest"]
    log.done("export")
    inputs = evidence_inputs(recipe, base.fingerprint, delta, out)
    summary.evidence = reusable_evidence(out, inputs)
    if summary.evidence is None:
        scorer = scorer_for(recipe, base.pipe.device)
        summary.evidence = collect_evidence(base, recipe, out, scorer, out, inputs=inputs)
        log.done("evidence")
    else:
        log.done("evidence", "complete for this recipe and delta")
    for name in (PROVENANCE_FILE, SIGNATURE_FILE):  # what a rebuild changes voids them
        (out / name).unlink(missing_ok=True)
    write_card(out, allowed_unmet=allow_unmet, recipe=recipe)
    check_folder(out, release_files(out))  # before the history seals the release
    log.done("card")
    entry = new_entry(
        recipe,
        delta,
        out,
        previous,
        base=base,
        adapter_tolerance=manifest.max_relative_error,
        seconds=summary.seconds,
        requirements=summary.requirements,
        allowed_unmet=allow_unmet,
    )
    write_history(out, [*previous, entry])
    log.done("history")
    summary.files = sorted(entry.files) + [HISTORY_FILE]
    return summary
