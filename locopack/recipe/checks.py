"""Checks of a loaded recipe that need no model run: :func:`preflight`.

The schema checks each value on its own; this module checks what a build would find out late:

- ``base.model`` and ``localize.scorer`` name something that exists: a local folder of the
  right layout (a diffusers pipeline folder with ``model_index.json``, or a locopack release
  with a ``merged/`` checkpoint, for the base; a CLIP model folder for the scorer), or a
  well-formed Hub id (no URL, no ``..``, no NUL byte) that the Hub knows, when online;
- the localization window and explicit layers fit the base model's sites, read from its configs
  (the denoiser is built on the ``meta`` device: no weights are read);
- under ``edit.tokens: concept`` every prompt of an edit contains its concept;
- every prompt/target pair changes something, an erase anchor does not name the concept it
  erases, and no prompt is both edited and preserved;
- prompt files lie under the recipe's folder (:mod:`locopack.recipe.files`), and plug-in
  detectors (code) are named only where the user allows code, and are detectors.

Hub lookups are skipped when ``offline`` is asked for or the Hub is switched off for the process
(``HF_HUB_OFFLINE=1``, detected once, before any request); a Hub base is then checked only for
its form.  Each problem is one line ``<file>:<line>: <field.path>: expected ..., found ...``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from locopack.errors import LocopackError, ModelLayoutError, RecipeError, SecretError
from locopack.filenames import ADAPTER_FILE, MERGED_DIR, NEURON_FILE, PIPELINE_INDEX
from locopack.hub_ref import is_hub_id
from locopack.prompt_samples import names, neighbours, normalized, sampled_unrelated
from locopack.recipe.errors import join_problems, show
from locopack.recipe.files import MAX_CONFIG_BYTES, read_regular, special_kind
from locopack.recipe.review import located, model_problems

if TYPE_CHECKING:
    from collections.abc import Callable

    from locopack.recipe.schema import Recipe

_URL = re.compile(r"[A-Za-z][\w+.-]*://")
_REF = "a local folder or a Hub id 'org/name'"


def preflight(recipe: Recipe, *, offline: bool = False) -> None:
    """Check ``recipe`` against everything that can be known without running a model.

    Args:
        recipe: a recipe from :func:`~locopack.recipe.load_recipe` (its source text gives lines).
        offline: skip every Hub lookup (also skipped when ``HF_HUB_OFFLINE=1``).

    Raises:
        RecipeError: listing every problem, each naming the recipe file, line and field.
    """
    from locopack.models.loading import hub_offline

    at, offline = located(recipe), offline or hub_offline()
    problems: list[str] = []
    base = _reference(recipe, ("base", "model"), "pipeline", at, offline, problems)
    _reference(recipe, ("localize", "scorer"), "scorer", at, offline, problems)
    if base is not None:
        problems += _site_problems(recipe, base, at) + _variant_problems(recipe, base, at)
        problems += _sampling_problems(recipe, base, at)
    problems += _prompt_problems(recipe, at)
    problems += _sample_problems(recipe, at)
    problems += _detector_problems(recipe, at)
    problems += _requirement_problems(recipe, at)
    problems += _replay_problems(recipe, at)
    if problems:
        raise RecipeError(join_problems(recipe.source, problems))


def _reference(
    recipe: Recipe, loc: tuple, kind: str, at: Callable, offline: bool, problems: list[str]
) -> str | None:
    """Check the model reference at ``loc``; return where its configs can be read (a local
    folder, or a Hub id when online), or None where they cannot or it is wrong."""
    value: str = getattr(getattr(recipe, loc[0]), loc[1])
    if "\0" in value:
        problems.append(at(loc, f"expected {_REF}, found a name with a NUL character"))
        return None
    if _URL.match(value):
        problems.append(at(loc, f"expected {_REF}, found a URL {show(value)}; write the id only"))
        return None
    path = Path(recipe.local_path(value))
    kind_found = special_kind(path)
    if kind_found:
        problems.append(at(loc, f"expected {_REF}, found {show(value)}, {kind_found}"))
        return None
    if path.exists():
        problem, folder = _local_layout(path, kind)
        problems += [at(loc, problem.format(show(value)))] if problem else []
        return folder
    if not is_hub_id(value):
        where = "" if Path(value).is_absolute() else " beside the recipe"
        problems.append(at(loc, f"expected {_REF}, found {show(value)}: no such folder{where}"))
        return None
    if offline:
        return None
    revision = recipe.base.revision if kind == "pipeline" else None
    problem, readable = _hub_problem(value, revision, kind)
    problems += [at(loc, problem)] if problem else []
    return value if readable and kind == "pipeline" else None


def _local_layout(path: Path, kind: str) -> tuple[str | None, str | None]:
    """``(problem or None, folder to read configs from)`` for a local ``path``; a problem
    reads ``expected <what>, found {}`` with a slot for the value."""

    pipeline = (
        f"a diffusers pipeline folder (with {PIPELINE_INDEX}, as save_pretrained writes it) "
        f"or a locopack release with {MERGED_DIR}/"
    )
    if kind == "scorer":
        return _clip_problem(path), None
    if not path.is_dir():
        return f"expected {pipeline}, found {{}}, a file", None
    if (path / PIPELINE_INDEX).is_file():
        return None, str(path)
    if (path / MERGED_DIR / PIPELINE_INDEX).is_file():
        return None, str(path / MERGED_DIR)
    if (path / ADAPTER_FILE).is_file() or (path / NEURON_FILE).is_file():
        why = "a release without a merged checkpoint (build it with export.merged: true)"
        return f"expected {pipeline}, found {{}}, {why}", None
    return f"expected {pipeline}, found {{}} without {PIPELINE_INDEX}", None


def _clip_problem(path: Path) -> str | None:
    """What keeps ``path`` from being a CLIP model folder, or None."""
    expected = "expected a CLIP model folder (config.json with model_type 'clip', safetensors)"
    if not path.is_dir():
        return f"{expected}, found {{}}, a file"
    try:
        data = read_regular(path / "config.json", MAX_CONFIG_BYTES, "config.json")
        config = json.loads(data.decode("utf-8"))
    except RecipeError as err:
        return f"{expected}, found {{}} whose {err}"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{expected}, found {{}} without a readable config.json"
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "clip":
        return f"{expected}, found {{}} with model_type {show(model_type)}"
    if not any(path.glob("*.safetensors")):
        return f"{expected}, found {{}} without safetensors weights"
    return None


def _hub_problem(repo: str, revision: str | None, kind: str) -> tuple[str | None, bool]:
    """Look ``repo`` up on the Hub once (no retries).

    Returns:
        ``(problem or None, whether its configs sit at the repo's top level)``.
    """
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hub_errors

    try:
        info = HfApi().model_info(repo, revision=revision, timeout=10)
    except hub_errors.RevisionNotFoundError:
        return f"expected a revision that {repo} has, found {show(revision)} (base.revision)", False
    except hub_errors.GatedRepoError:
        return f"{repo} is gated on the Hub: accept its terms there and log in", False
    except hub_errors.RepositoryNotFoundError:
        return f"expected a model on the Hub, found {show(repo)}: no such repo, or private", False
    except (hub_errors.HfHubHTTPError, OSError) as err:
        text = (str(err).splitlines() or [type(err).__name__])[0][:120]
        hint = "check the network, or skip Hub lookups (validate --offline)"
        return f"cannot reach the Hub to look up {repo} ({text}); {hint}", False
    files = {s.rfilename for s in info.siblings or []}
    top = "config.json" if kind == "scorer" else PIPELINE_INDEX
    wanted = {top} if kind == "scorer" else {top, f"{MERGED_DIR}/{PIPELINE_INDEX}"}
    if files and not files & wanted:
        return f"expected a repo with {' or '.join(sorted(wanted))}, found {repo} without", False
    return None, top in files


def _site_problems(recipe: Recipe, model: str, at: Callable) -> list[str]:
    """The window and layers against the base's sites, from its configs only."""
    from locopack.models import load_denoiser_layout

    revision = recipe.base.revision if is_hub_id(model) else None
    try:
        family, denoiser = load_denoiser_layout(model, revision)
    except (LocopackError, OSError, ValueError) as err:
        return [at(("base", "model"), f"expected a model of a supported family: {err}")]
    sites = [s.path for s in family.sites(denoiser)]
    problems = model_problems(recipe, len(sites), sites, family.not_a_site_reason)
    length = recipe.base.max_sequence_length
    try:  # as the build sets the family up (release.base.recipe_family)
        if length is not None:
            family.with_t5_length(length)
    except ModelLayoutError as err:
        text = f"expected a T5 length this model takes, found {length}: {err}"
        problems.append(at(("base", "max_sequence_length"), text))
    return problems


def _variant_problems(recipe: Recipe, model: str, at: Callable) -> list[str]:
    """``base.variant`` names weights the local pipeline folder ``model`` holds, as diffusers
    picks them: every component folder with a file whose second dot-part starts with the
    variant must hold its weights under that exact name, and at least one does."""
    variant, folder = recipe.base.variant, Path(model)
    if variant is None or not folder.is_dir():
        return []
    try:
        index = json.loads(read_regular(folder / PIPELINE_INDEX, MAX_CONFIG_BYTES, PIPELINE_INDEX))
        parts = [folder / name for name in index if (folder / name).is_dir()]
        names = {part.name: [p.name for p in part.iterdir()] for part in parts}
    except (RecipeError, OSError, ValueError, TypeError, AttributeError):
        return []  # the folder's problem is reported by the site checks
    exact = re.compile(
        rf"[^.]+\.{re.escape(variant)}(-\d{{5}}-of-\d{{5}})?\.(safetensors|bin)"
        rf"|[^.]+\.(safetensors|bin)\.index\.{re.escape(variant)}\.json"
    )
    claimed = [
        k for k, v in names.items() if any(f"{n}.".split(".")[1].startswith(variant) for n in v)
    ]
    broken = [k for k in claimed if not any(exact.fullmatch(n) for n in names[k])]
    if claimed and not broken:
        return []
    where = f"{', '.join(broken)} without them" if broken else "no component with them"
    text = f"expected a variant whose weights (<name>.{variant}.safetensors) the model holds"
    return [at(("base", "variant"), f"{text}, found {show(variant)}: {where}")]


def _sampling_problems(recipe: Recipe, model: str, at: Callable) -> list[str]:
    """``localize.steps`` and ``localize.resolution`` against what the base's scheduler and
    VAE can do (:func:`~locopack.models.loading.sampling_limits`, configs only)."""
    from locopack.models.loading import sampling_limits

    revision = recipe.base.revision if is_hub_id(model) else None
    try:
        limits = sampling_limits(model, revision)
    except (LocopackError, OSError, ValueError):
        return []  # the family check names what is wrong with the model
    problems, settings = [], recipe.localize
    if limits.max_steps is not None and settings.steps > limits.max_steps:
        expected = f"at most {limits.max_steps} (what this model's scheduler can take)"
        problems.append(at(("localize", "steps"), f"expected {expected}, found {settings.steps}"))
    unit, size = limits.resolution_unit, settings.resolution
    if size is not None and (size < unit or size % unit):
        expected = f"a multiple of {unit} (this model's VAE scale factor times its patch size)"
        problems.append(at(("localize", "resolution"), f"expected {expected}, found {size}"))
    return problems


def _prompt_problems(recipe: Recipe, at: Callable) -> list[str]:
    """Concepts present under ``tokens: concept``; pairs that change something; nothing both
    edited and preserved."""
    problems: list[str] = []
    listed = reversed(list(enumerate(recipe.preserve)))
    preserved = {normalized(p): ("preserve", k) for k, p in listed}
    for i, edit in reversed(list(enumerate(recipe.edits))):
        kept = enumerate(edit.preserve)
        preserved |= {normalized(p): ("edits", i, "preserve", k) for k, p in kept}
    for i, edit in enumerate(recipe.edits):
        pairs = zip(edit.originals(), edit.targets_expanded(), strict=True)
        for j, (original, target) in enumerate(pairs):
            target_at = ("edits", i, *edit.target_field(j))
            if recipe.edit.tokens == "concept" and not names(original, edit.label):
                expected = f"a prompt that contains {edit.label!r} (edit.tokens is 'concept')"
                found = f"found {show(original)}; write {{concept}} in it"
                problems.append(at(("edits", i, "prompts", j), f"expected {expected}, {found}"))
            if normalized(original) == normalized(target):
                text = f"expected a target that differs from its prompt, found {show(target)}"
                problems.append(at(target_at, f"{text} (nothing to edit)"))
            elif edit.removes_label and names(target, edit.label):
                text = f"expected an anchor without the concept {edit.label!r}"
                problems.append(at(target_at, f"{text}, found {show(target)}"))
            if normalized(original) in preserved:
                text = f"expected prompts that no edit changes, found {show(original)}"
                where = preserved[normalized(original)]
                problems.append(at(where, f"{text} (edits[{i}] edits it)"))
    return list(dict.fromkeys(problems))


_SAMPLES = ("edit.neighbours", "evidence.sample_unrelated")


def _sample_problems(recipe: Recipe, at: Callable) -> list[str]:
    """``edit.neighbours`` and ``evidence.sample_unrelated`` can draw their prompts, and
    neither they nor the recipe's text hold a secret of this machine (a release is public)."""
    from locopack.secret_scan import check_texts

    problems, texts = [], {recipe.source: recipe.source_text}
    for field, draw in zip(_SAMPLES, (neighbours, sampled_unrelated), strict=True):
        try:
            texts[f"{recipe.source}: {field}"] = "\n".join(draw(recipe))
        except RecipeError as err:
            problems.append(_with_line(str(err), recipe.source, at))
    try:
        check_texts(texts)
    except SecretError as err:
        problems.append(_with_line(str(err), recipe.source, at))
    return problems


def _with_line(message: str, source: str, at: Callable) -> str:
    """``message`` (``<file>: <field>[.count]: <text>``, from drawing prompts) placed at its
    line: at ``count``, or at the field's ``source`` (the file it reads); others unchanged."""
    for field in _SAMPLES:
        key, colon, text = message.removeprefix(f"{source}: {field}").partition(": ")
        if message.startswith(f"{source}: {field}") and colon and key in ("", ".count"):
            return at((*field.split("."), key.lstrip(".") or "source"), text)
    return message


def _detector_problems(recipe: Recipe, at: Callable) -> list[str]:
    """Plug-in detectors (code) only where the user allows code, and only real detectors;
    options that every detector's function takes."""
    from locopack.evidence.detectors import (
        ALLOW_CODE_ENV,
        code_allowed,
        is_plugin,
        options_problem,
        plugin_problem,
    )
    from locopack.evidence.detectors.registry import detector_names

    problems = []
    for k, spec in enumerate(recipe.evidence.detectors):
        loc = ("evidence", "detectors", k)
        if problem := options_problem(spec.name, spec.options):
            problems.append(at((*loc, "options"), problem))
        if not is_plugin(spec.name):
            continue
        if not code_allowed():
            hint = f"pass --allow-code (or set {ALLOW_CODE_ENV}=1) if you trust that module"
            found = f"found {show(spec.name)}, Python code a recipe runs only when you allow it"
            known = ", ".join(detector_names())
            problems.append(at(loc, f"expected a built-in detector ({known}), {found}; {hint}"))
        elif problem := plugin_problem(spec.name):
            problems.append(at(loc, f"{problem} ({show(spec.name)})"))
    return problems


def _replay_problems(recipe: Recipe, at: Callable) -> list[str]:
    """The replay attack's prompts can be read, row by row
    (:mod:`locopack.evidence.attacks.replay`)."""
    if recipe.evidence.attacks.replay is None:
        return []
    from locopack.evidence.attacks.replay import replay_prompts

    try:
        replay_prompts(recipe)
    except RecipeError as exc:
        return [at(("evidence", "attacks", "replay", "prompts"), str(exc))]
    return []


def _requirement_problems(recipe: Recipe, at: Callable) -> list[str]:
    """Each stated requirement can be judged: its detector is one of the evidence's and gives
    rates; an attack bar needs an erase and an attack that runs."""
    named = [d.name for d in recipe.evidence.detectors]
    rates = [n for n in named if n != "clip"]  # CLIP gives scores, not rates
    problems = []
    for i, edit in enumerate(recipe.edits):
        wanted, loc = edit.requirements, ("edits", i, "requirements")
        if wanted.detector is not None and wanted.detector not in rates:
            found = f"found {show(wanted.detector)}"
            if wanted.detector in named:
                found += " (it gives CLIP scores, not rates)"
            text = f"expected one of the evidence's rate detectors {rates}, {found}"
            problems.append(at((*loc, "detector"), f"{text}; add it to evidence.detectors"))
        judged_by_detector = wanted.stated() & {"concept_left", "target_shown", "prompt_kept"}
        if judged_by_detector and not rates:
            for name in sorted(judged_by_detector):
                text = "expected a rate detector in evidence.detectors to judge it, found"
                problems.append(at((*loc, name), f"{text} {named} (e.g. add toy or nudenet)"))
        if "attack_success" in wanted.stated():
            if edit.kind != "erase":
                text = "expected no attack bar on an update (the attack runs on erasures)"
                problems.append(at((*loc, "attack_success"), text))
            elif recipe.evidence.attack.steps == 0 and not any(
                dict(recipe.evidence.attacks).values()
            ):
                text = (
                    "expected an attack to judge it, found evidence.attack.steps: 0 and every "
                    "attack of evidence.attacks off"
                )
                problems.append(at((*loc, "attack_success"), text))
    return problems
