"""Detectors: what the evidence asks of each generated image, beyond CLIP agreement.

A detector is a callable ``detector(images, prompts, **options) -> findings``: for each PIL
image (and the prompt it was drawn from) a ``{name: value}`` mapping.  Decisions are 0.0 / 1.0
and scores lie in [0, 1]; the evidence averages them into rates.  Two names are read:

- the edit's label (``stripes``, ``triangle``, ``the emblem of veridia``, ``nudity``...): the
  concept seen in the image;
- ``prompt``: how much of what the prompt asks the image shows (1.0: all of it).

A recipe's ``evidence.detectors`` names them: a registered name (:mod:`.registry`, which the
recipe schema checks names against) or ``module:callable`` for the user's own, each with
keyword ``options``.  A plug-in is Python code that the recipe makes locopack import and call,
and recipes are shared like model configs, so plug-ins load only when the user allows code
(``--allow-code`` or :data:`ALLOW_CODE_ENV`), as ``trust_remote_code`` does in transformers;
the card and the history then name them.  Before that, :func:`plugin_problem` checks, without
importing anything, that the module is a Python source file outside the standard library whose
top level defines the callable as a function taking ``(images, prompts, ...)``: ``os:system``,
``builtins:eval`` or ``json:loads`` are not detectors.  Registered (:mod:`.registry`):

- ``clip``: the recipe's CLIP scorer, ``prompt`` = its score to the prompt (100·cos; a
  ``score`` detector, averaged but not a rate);
- ``toy``, ``toy-deep``: the toy worlds' pixel-statistics detectors (:mod:`.toy`,
  :mod:`.toy_deep`);
- ``nudenet``: NudeNet's exposed-class detector (:mod:`.nudity`, the ``nudenet`` extra).
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import math
import os
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import RecipeError
from .registry import detector_entry

if TYPE_CHECKING:
    from ...localize.scorers import Scorer


def target(name: str) -> str:
    """The ``module:callable`` of the detector ``name``: a registered one's, or ``name``."""
    entry = detector_entry(name)
    return entry.target if entry else name


def clip_detector(images, prompts, *, scorer) -> list[dict[str, float]]:
    """The CLIP score (100·cos) of each image to its prompt, as ``prompt``."""
    return [{"prompt": float(s)} for s in scorer(list(images), list(prompts))]


clip_detector.kind = "score"


@dataclass
class Detector:
    """A named detector with its options; calling it checks what it returns."""

    name: str
    function: Callable[..., object]
    options: dict[str, object] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``rate`` (values in [0, 1], shown as percentages) or ``score``."""
        return getattr(self.function, "kind", "rate")

    def __call__(self, images: list, prompts: list[str]) -> list[dict[str, float]]:
        found = self.function(images, prompts, **self.options)
        if not isinstance(found, list | tuple) or len(found) != len(images):
            raise RecipeError(
                f"detector {self.name}: expected one findings mapping per image "
                f"({len(images)}), found {type(found).__name__}"
            )
        return [{str(k): float(v) for k, v in dict(f).items()} for f in found]


#: the environment variable that allows plug-in detectors (``--allow-code`` sets it)
ALLOW_CODE_ENV = "LOCOPACK_ALLOW_CODE"


def code_allowed() -> bool:
    """Whether the user allowed plug-in code (:data:`ALLOW_CODE_ENV` set to 1/true/yes)."""
    return os.environ.get(ALLOW_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


def is_plugin(name: str) -> bool:
    """Whether the detector ``name`` is the user's code (``module:callable``), not registered."""
    return detector_entry(name) is None


def plugin_problem(name: str) -> str | None:
    """Why the plug-in ``module:callable`` cannot be a detector, or None; imports nothing.

    The module is looked up on ``sys.path`` without importing it or its parent packages, and
    its source is parsed: the callable must be a top-level ``def`` with at least two
    positional parameters (the images and their prompts).
    """
    module_name, _, attribute = name.partition(":")
    spec = _find_without_import(module_name)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return f"expected an importable Python source module, found no module {module_name!r}"
    if _in_standard_library(spec.origin):
        return f"expected a detector module of your own, found {module_name!r} of Python itself"
    tree, function = _source_function(spec.origin, attribute)
    if tree is None:
        return f"expected a readable Python module, found {module_name!r} that does not parse"
    if function is None:
        return f"expected a function {attribute!r} defined at the top of {module_name!r}"
    if any(attribute in _bound_names(node) for node in tree.body[tree.body.index(function) + 1 :]):
        return f"expected {attribute!r} to stay a function, found it bound again after its def"
    if len(function.args.posonlyargs + function.args.args) < 2:
        return f"expected {attribute}(images, prompts, **options), found a function of fewer"
    return None


def _source_function(
    origin: str, attribute: str
) -> tuple[ast.Module | None, ast.FunctionDef | ast.AsyncFunctionDef | None]:
    """The parsed module at ``origin`` and its (last) top-level ``def attribute``; None for
    either that is not there (the file does not parse, or no such function)."""
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None, None
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    named = [n for n in defs if n.name == attribute]
    return tree, named[-1] if named else None  # the last one is what an import binds


def _bound_names(statement: ast.stmt) -> set[str]:
    """The names a top-level statement other than a ``def`` binds (assignments, imports,
    classes)."""
    if isinstance(statement, ast.Import | ast.ImportFrom):
        return {(a.asname or a.name).split(".")[0] for a in statement.names}
    if isinstance(statement, ast.ClassDef):
        return {statement.name}
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
        return set()
    stored = (n for n in ast.walk(statement) if isinstance(n, ast.Name))
    return {n.id for n in stored if isinstance(n.ctx, ast.Store | ast.Del)}


def _find_without_import(module_name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of ``module_name`` found on the path, its parents looked up, never imported."""
    spec, search = None, None
    for part in range(1, module_name.count(".") + 2):
        name = ".".join(module_name.split(".")[:part])
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, search)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        search = spec.submodule_search_locations
    return spec


def _in_standard_library(origin: str) -> bool:
    path = Path(origin).resolve()
    stdlib = {Path(sysconfig.get_path(k)).resolve() for k in ("stdlib", "platstdlib")}
    site = {Path(sysconfig.get_path(k)).resolve() for k in ("purelib", "platlib")}
    return any(s in path.parents for s in stdlib) and not any(s in path.parents for s in site)


def options_problem(name: str, options: dict[str, object]) -> str | None:
    """Why the detector ``name`` cannot be called with ``options``, or None: an option its
    function has no keyword parameter for (and no ``**options``), or a required one missing.
    The parameters are read from the module's source, so nothing is imported or called; where
    the function cannot be found that way, :func:`plugin_problem` or :func:`load_detector`
    says why."""
    module_name, _, attribute = target(name).partition(":")
    spec = _find_without_import(module_name)
    if spec is None or not spec.origin:
        return None
    _, function = _source_function(spec.origin, attribute)
    if function is None or function.args.kwarg is not None:
        return None
    args = function.args
    positional = args.args[max(0, 2 - len(args.posonlyargs)) :]  # after images, prompts
    entry = detector_entry(name)
    bound = {"scorer"} if entry and entry.needs_scorer else set()  # passed by locopack
    takes = [a.arg for a in positional + args.kwonlyargs if a.arg not in bound]
    given = [str(key) for key in options]
    unknown = [key for key in given if key not in takes]
    if unknown:
        known = f"its options are {', '.join(takes)}" if takes else "it takes no options"
        return f"unknown option {unknown[0]!r} for {name} ({known}); remove it or fix its name"
    required = positional[: len(positional) - len(args.defaults)]
    required += [a for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is None]
    missing = [a.arg for a in required if a.arg not in given and a.arg not in bound]
    if missing:
        return f"{name} needs the option {missing[0]!r}; add it under options"
    return None


def load_detector(
    name: str, options: dict[str, object] | None = None, scorer: Scorer | None = None
) -> Detector:
    """The detector a recipe names: a registered name (:mod:`.registry`) or ``module:callable``.

    Raises:
        RecipeError: a plug-in while code is not allowed, or not a detector; the module
            cannot be imported (e.g. an extra is not installed) or holds no such callable.
    """
    where = f"evidence.detectors: {name}"
    if is_plugin(name):
        if not code_allowed():
            raise RecipeError(
                f"{where}: names Python code, which a recipe runs only when you allow it: "
                f"pass --allow-code (or set {ALLOW_CODE_ENV}=1) if you trust that module"
            )
        problem = plugin_problem(name)
        if problem:
            raise RecipeError(f"{where}: {problem}")
    entry = detector_entry(name)
    module_name, _, attribute = target(name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        needed = entry.extra if entry else None
        extra = f"; install it with pip install 'locopack[{needed}]'" if needed else ""
        raise RecipeError(f"{where}: cannot import {module_name} ({err}){extra}") from None
    except (Exception, SystemExit) as err:  # the module's own code failed as it was imported
        found = f"{module_name} raising {type(err).__name__}: {err}"
        raise RecipeError(f"{where}: expected a module that imports, found {found}") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise RecipeError(f"{where}: {module_name} has no callable {attribute!r}")
    problem = options_problem(name, dict(options or {}))
    if problem:
        raise RecipeError(f"{where}: {problem}")
    options = dict(options or {})
    if entry and entry.needs_scorer:
        options["scorer"] = scorer
    return Detector(name, function, options)


def rates(findings: list[dict[str, float]], label: str) -> dict[str, float]:
    """Mean findings of a set of images: ``concept`` (the finding named ``label``, 0 where
    absent) and ``prompt`` (where every image has one)."""
    out = {"concept": _mean([f.get(label, 0.0) for f in findings])}
    if findings and all("prompt" in f for f in findings):
        out["prompt"] = _mean([f["prompt"] for f in findings])
    return out


def _mean(values: list[float]) -> float:
    """``statistics.fmean`` (fsum / n), without importing statistics where the recipe schema
    reads the registry."""
    if not values:
        raise ValueError("the mean of no findings")
    return math.fsum(values) / len(values)
