"""Exporting a delta in the chosen formats (the registered ones, :mod:`locopack.export.formats`:
the diffusers/PEFT adapter (+ manifest), a kohya file, a merged checkpoint, an ONNX denoiser,
and any format registered since).  ``locopack build`` and ``locopack export`` both go through
:func:`export_delta`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ExportError
from ..export.formats import ExportChoice, ExportJob, Written
from ..export.registry import no_base
from ..models.loaded import LoadedBase
from ..release.layout import recorded_base
from .lock import build_lock, check_free

if TYPE_CHECKING:
    from ..delta import WeightDelta
    from ..models.base import ModelFamily

__all__ = ["ExportChoice", "export_delta", "run_export"]


def export_delta(
    delta: WeightDelta, out: Path, choice: ExportChoice, base: LoadedBase | None = None
) -> dict[str, object]:
    """Write the exports of ``delta`` into ``out``, each chosen format through its registered
    writer (:mod:`locopack.export.formats`), in registry order.

    ``base`` (needed for merged and ONNX) must be the model the delta was made for.  Every
    format is checked against the delta's family (and ONNX against the denoiser's inputs)
    before anything is written.

    Returns:
        {what: path} of everything written, plus ``manifest`` for the adapter.

    Raises:
        ExportError: a format the family cannot have (kohya for a family without kohya files,
            ONNX for a denoiser whose inputs it cannot carry), or merged/ONNX without a base;
            nothing is written then.
    """
    if choice.needs_base and base is None:
        raise no_base([f.name for f in choice.chosen() if f.needs_base])
    family = _delta_family(delta)
    choice.check(family)
    for fmt in choice.chosen():
        if fmt.check_base is not None and base is not None:
            fmt.check_base(base)
    job = ExportJob(delta, out, family, choice.max_rank, choice.energy, base)
    written: dict[str, object] = {}
    out.mkdir(parents=True, exist_ok=True)
    for fmt in choice.chosen():
        found: Written = fmt.write(job)
        written.update(found)
    return written


def run_export(
    delta_path: Path,
    out: Path,
    choice: ExportChoice,
    *,
    model: str | None = None,
    force: bool = False,
    allow_pickle: bool = False,
) -> dict[str, object]:
    """Export a ``delta.safetensors`` into ``out`` (see :func:`export_delta`).

    The base model (needed for merged and ONNX) is the one the delta records (a relative
    location is resolved against the delta's folder) unless ``model`` names another folder or
    Hub id; it must be the model the delta was made for (its fingerprint), unless ``force``.
    A format the delta's family cannot have is refused before the base is loaded.
    It is loaded and checked before anything is written; the writing holds ``out``'s lock
    (:mod:`.lock`), as a build does.

    Raises:
        FolderLockedError: another command is writing into ``out``.
    """
    from ..delta import WeightDelta
    from ..fingerprint import check_base_model
    from ..models import load_base_model

    check_free(out)  # before the base is loaded; the lock is taken to write
    delta = WeightDelta.load(delta_path)
    choice.check(_delta_family(delta))
    base = None
    if choice.needs_base:
        prov = delta.provenance
        source = model or recorded_base(prov, delta_path.parent)
        if not source:
            raise ExportError(f"{delta_path}: its provenance names no base model; pass --model")
        revision = None if model else prov.base_commit or prov.base_revision
        base = load_base_model(
            source,
            revision,
            prov.base_dtype or "float32",
            None if model else prov.base_variant,
            allow_pickle=allow_pickle,
        )
        check_base_model(base.pipe, base.family, prov.to_json(), delta_path, force)
    with build_lock(out, command="export"):
        return export_delta(delta, out, choice, base)


def _delta_family(delta: WeightDelta) -> type[ModelFamily]:
    """The family the delta's provenance names."""
    from ..models import get_family

    return get_family(str(delta.provenance.family))
