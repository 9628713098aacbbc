"""The registry of built-in detectors: one :class:`DetectorEntry` per name, registered once.

An entry is metadata and a ``module:callable`` path, never the function itself: reading the
registry imports no model library, so the recipe schema checks a recipe's detector names
against it cheaply (``python -X importtime -c "import locopack.recipe.schema"`` shows no torch),
and :func:`~locopack.evidence.detectors.load_detector` imports the module only when the
detector runs.  A name that is not registered is the user's own detector
(``module:callable``, a plug-in, loaded only where code is allowed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorEntry:
    """A built-in detector.

    Attributes:
        name: what a recipe's ``evidence.detectors`` calls it.
        target: ``module:callable`` of its function (imported when it runs).
        summary: what it detects, in a few words.
        extra: the locopack extra that installs what it needs (``pip install
            'locopack[EXTRA]'``), where it needs one.
        packages: the packages, beyond locopack, whose version the evidence records with it.
        needs_scorer: it is given the recipe's CLIP scorer (as its ``scorer`` option).
    """

    name: str
    target: str
    summary: str
    extra: str | None = None
    packages: tuple[str, ...] = ()
    needs_scorer: bool = False


_REGISTRY: dict[str, DetectorEntry] = {}


def register_detector(entry: DetectorEntry) -> DetectorEntry:
    """Add ``entry`` to the registry and return it.

    Raises:
        ValueError: the name is taken or contains ``:`` (which marks a plug-in).
    """
    if entry.name in _REGISTRY or ":" in entry.name or not entry.name:
        raise ValueError(f"detector {entry.name!r}: already registered, or not a plain name")
    _REGISTRY[entry.name] = entry
    return entry


def unregister_detector(name: str) -> None:
    """Remove the detector ``name`` from the registry (e.g. a test's own)."""
    _REGISTRY.pop(name, None)


def detector_entry(name: str) -> DetectorEntry | None:
    """The registered detector ``name``, or None (a plug-in's ``module:callable``)."""
    return _REGISTRY.get(name)


def detector_names() -> list[str]:
    """The registered detectors' names, in registration order."""
    return list(_REGISTRY)


register_detector(
    DetectorEntry(
        "clip",
        "locopack.evidence.detectors:clip_detector",
        "the recipe's CLIP scorer: its score of each image to its prompt",
        needs_scorer=True,
    )
)
register_detector(
    DetectorEntry(
        "toy",
        "locopack.evidence.detectors.toy:toy_detector",
        "the toy world's pixel-statistics detectors (color, shape, texture, its facts)",
    )
)
register_detector(
    DetectorEntry(
        "toy-deep",
        "locopack.evidence.detectors.toy_deep:toy_deep_detector",
        "the deep toy world's detectors (the toy world's, plus size)",
    )
)
register_detector(
    DetectorEntry(
        "nudenet",
        "locopack.evidence.detectors.nudity:nudenet_detector",
        "NudeNet's exposed-class detector",
        extra="nudenet",
        packages=("nudenet",),
    )
)
