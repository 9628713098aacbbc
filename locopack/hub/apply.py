"""Apply a released edit to a pipeline at inference (``locopack.apply``): a LoRA adapter or a
neuron-edit file.

``apply(pipe, source)`` finds the edit in ``source`` (a release folder or a file), checks that
it was made for this base model (the recorded fingerprint must match the pipeline's; pass
``force=True`` to apply it anyway), and applies it:

- an adapter through diffusers' own ``load_lora_weights`` for the families that support it
  (SD-1.x/2.x, SD-XL, IF), and through PEFT directly for PixArt, whose pipeline has no LoRA
  loader in diffusers;
- a neuron edit as forward hooks on the key/value projections.

:func:`load_for_inference` loads a pipeline, or a release's merged checkpoint, by one name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..edit.neurons import NeuronEdit, apply_neurons
from ..errors import ExportError, ModelLayoutError
from ..export.lora import read_adapter
from ..fingerprint import check_base_model
from ..hub_ref import is_hub_ref, parse_ref
from ..models import detect_family
from ..release.layout import (
    ADAPTER_FILE,
    CARD_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    MERGED_DIR,
    NEURON_FILE,
    PIPELINE_INDEX,
    RECIPE_FILE,
)
from ..release.signing import TrustedKeys

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily
    from ..models.loaded import LoadedBase

ADAPTER_NAME = "locopack"


@dataclass
class AppliedEdit:
    """What :func:`apply` did; :meth:`remove` undoes it."""

    kind: str
    source: Path
    provenance: dict[str, object]
    _undo: Callable[[], None] | None = None

    def remove(self) -> None:
        """Take the edit off the pipeline again."""
        if self._undo is not None:
            self._undo()
            self._undo = None


def _find(source: Path) -> tuple[str, Path]:
    if source.is_dir():
        for kind, name in (("adapter", ADAPTER_FILE), ("neurons", NEURON_FILE)):
            if (source / name).is_file():
                return kind, source / name
        raise ExportError(f"{source}: no {ADAPTER_FILE} or {NEURON_FILE} in this folder")
    if source.is_file():
        return ("neurons" if source.name.endswith(NEURON_FILE) else "adapter"), source
    raise ExportError(f"{source}: no such file or folder")


def _load_adapter(
    pipe: DiffusionPipeline,
    family: type[ModelFamily],
    path: Path,
    tensors: dict,
    packed: dict,
    scale: float,
):
    if hasattr(pipe, "load_lora_weights"):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=ADAPTER_NAME)
        pipe.set_adapters([ADAPTER_NAME], adapter_weights=[scale])
        return pipe.unload_lora_weights  # removes the LoRA layers, not just the adapter
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    prefix = f"{family.denoiser_attr}."
    config = {k.removeprefix(prefix): v for k, v in packed.items() if k.startswith(prefix)}
    keep = set(LoraConfig.__dataclass_fields__)
    lora = LoraConfig(**{k: v for k, v in config.items() if k in keep and k != "peft_type"})
    denoiser = getattr(pipe, family.denoiser_attr)
    inject_adapter_in_model(lora, denoiser, adapter_name=ADAPTER_NAME)
    state = {
        k.removeprefix(prefix): (v * scale if ".lora_B." in k else v) for k, v in tensors.items()
    }
    set_peft_model_state_dict(denoiser, state, adapter_name=ADAPTER_NAME)
    return lambda: _remove_lora_layers(denoiser)


def _remove_lora_layers(model: torch.nn.Module) -> None:
    """Put every PEFT-wrapped layer of ``model`` back to its base layer."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config


def apply(
    pipe: DiffusionPipeline,
    source: str | Path,
    scale: float = 1.0,
    *,
    force: bool = False,
    public_key: str | Path | None = None,
    trusted: TrustedKeys | None = None,
) -> AppliedEdit:
    """Apply the edit in ``source`` to ``pipe`` with strength ``scale``.

    ``source`` is a local release folder or file, or a Hub release ``ORG/NAME[@REVISION]``
    (used when no local path of that name exists; only the edit files are downloaded).  With
    ``public_key`` (a PEM file; or ``trusted``: keys, a certificate chain or a Sigstore
    identity) the release is used only if its signature verifies against it and its provenance
    matches its history (a Hub release is then downloaded whole, to verify every file).

    Raises:
        ExportError: nothing loadable at ``source``, or a damaged file.
        EditError: the edit was made for another base model (unless ``force``).
        HubError: a Hub release that cannot be found or downloaded.
        SignatureError: a key was given and the release does not verify against it.
    """
    family = detect_family(pipe)
    if public_key is not None:
        trusted = TrustedKeys(public_keys=(Path(public_key),))
    if trusted is not None and trusted.given:
        from ..release.verify import verified_release

        folder = verified_release(source, trusted)
        source = folder if Path(source).is_dir() or not Path(source).exists() else source
    if not Path(source).exists():
        from .pull import resolve_release

        if is_hub_ref(source):
            wanted = [ADAPTER_FILE, NEURON_FILE, MANIFEST_FILE, RECIPE_FILE, CARD_FILE]
            source = resolve_release(str(source), allow_patterns=wanted)
    kind, path = _find(Path(source))
    if kind == "neurons":
        edit = NeuronEdit.load(path)
        check_base_model(pipe, family, edit.metadata, path, force)
        hooks = apply_neurons(getattr(pipe, family.denoiser_attr), edit, scale)
        return AppliedEdit(kind, path, dict(edit.metadata), hooks.remove)
    tensors, provenance, packed = read_adapter(path)
    check_base_model(pipe, family, provenance, path, force)
    undo = _load_adapter(pipe, family, path, tensors, packed, scale)
    return AppliedEdit(kind, path, provenance, undo)


def pipeline_source(model: str, revision: str | None = None) -> tuple[str, str | None]:
    """Where to load the pipeline ``model`` names: a pipeline folder or Hub id as it is, or,
    for a locopack release (a folder, or a Hub repo without ``model_index.json``), its
    ``merged/`` checkpoint (downloading only that).

    Returns:
        ``(folder or Hub id, revision)`` for :func:`~locopack.models.load_pipeline`.

    Raises:
        ModelLayoutError: a release without a merged checkpoint, or neither.
        HubError: a Hub reference that cannot be found or downloaded.
    """
    from ..models.loading import model_layout
    from .pull import resolve_release

    adapter_only = (
        "a locopack release without a merged checkpoint; pass its base model as the model and "
        "the release as the adapter to apply"
    )
    path = Path(model)
    if not path.exists() and is_hub_ref(model):
        try:
            model_layout(model, revision)
        except ModelLayoutError as err:  # not a pipeline: a release with merged/?
            ref = f"{model}@{revision}" if revision else model
            folder = resolve_release(ref, allow_patterns=[f"{MERGED_DIR}/*"])
            if not (folder / MERGED_DIR / PIPELINE_INDEX).is_file():
                raise ModelLayoutError(f"{err}; if it is {adapter_only}") from None
            return str(folder / MERGED_DIR), None
        return model, revision
    if path.is_dir() and not (path / PIPELINE_INDEX).is_file():
        if (path / MERGED_DIR / PIPELINE_INDEX).is_file():
            return str(path / MERGED_DIR), None
        if (path / ADAPTER_FILE).is_file() or (path / NEURON_FILE).is_file():
            raise ModelLayoutError(f"{model}: {adapter_only}")
    return model, revision


def load_for_inference(
    model: str, *, allow_pickle: bool = False, trusted: TrustedKeys | None = None
) -> LoadedBase:
    """Load ``model``: a pipeline folder or Hub id[@REVISION], or a locopack release (local or
    on the Hub) whose ``merged/`` checkpoint is then loaded (see :func:`pipeline_source`);
    with ``trusted``, only a release whose signature verifies against it.

    Returns:
        The loaded base (pipeline, family, where it came from).

    Raises:
        SignatureError: ``trusted`` is given and the release ``model`` does not verify (a plain
            pipeline carries no signature and is loaded as it is).
    """
    from ..models import load_base_model

    if trusted is not None and trusted.given and _is_release(model):
        from ..release.verify import verified_release

        model = str(verified_release(model, trusted))
    revision = None
    if not Path(model).exists() and is_hub_ref(model):
        model, revision = parse_ref(model)
    return load_base_model(*pipeline_source(model, revision), allow_pickle=allow_pickle)


def _is_release(model: str) -> bool:
    """Whether ``model`` names a locopack release (which carries a signature to check) rather
    than a plain pipeline (which carries none)."""
    path = Path(model)
    if path.exists():
        return (path / HISTORY_FILE).is_file() or (path.parent / HISTORY_FILE).is_file()
    if not is_hub_ref(model):
        return False
    from ..models.loading import model_layout

    try:
        model_layout(*parse_ref(model))
    except ModelLayoutError:
        return True  # no pipeline: a release (or nothing, which the download then says)
    return False
