"""Loading models from a local folder or a Hub id (``org/name``), safetensors only.

Nothing here downloads weights just to inspect a model: :func:`load_denoiser_layout` reads the
configs and builds the denoiser on the ``meta`` device, so listing the sites of a multi-GB
model costs two small JSON files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError

from ..errors import ModelLayoutError, OfflineError, RecipeError
from ..filenames import PIPELINE_INDEX
from ..hub_ref import hub_unreachable, is_hub_id
from ..recipe.files import MAX_CONFIG_BYTES, read_regular
from .base import ModelFamily
from .registry import family_for

if TYPE_CHECKING:
    from diffusers import SchedulerMixin

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def hub_offline() -> bool:
    """True when the Hub is switched off for this process (``HF_HUB_OFFLINE=1``): nothing then
    asks it anything, and what is not in the local cache fails at once, without retries."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return flag or bool(constants.HF_HUB_OFFLINE)


def _read_json(model: str, filename: str, revision: str | None) -> dict[str, object]:
    folder = Path(model)
    if folder.is_dir():
        path = folder / filename
        if not os.path.lexists(path):
            raise ModelLayoutError(
                f"{path}: not found; a diffusers pipeline folder (made with save_pretrained) "
                "has model_index.json and one subfolder per component"
            )
    elif is_hub_id(model):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError

        try:
            path = Path(hf_hub_download(model, filename, revision=revision))
        except (HfHubHTTPError, OSError, ValueError) as err:
            if hub_offline():  # the cache was the only place to look: say so, once
                raise OfflineError(
                    f"{model}: the Hub is switched off (HF_HUB_OFFLINE=1) and {filename} is not "
                    "in the local cache; fetch the model once online, or name a local folder"
                ) from None
            raise hub_unreachable(err, f"{model}: {filename}") or ModelLayoutError(
                f"{model}: cannot fetch {filename} from the Hub: {err}"
            ) from None
    else:
        raise ModelLayoutError(
            f"{model!r} is neither a local folder nor a Hub id of the form 'org/name'"
        )
    try:
        data = json.loads(read_regular(path, MAX_CONFIG_BYTES, str(path)).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecipeError) as err:
        raise ModelLayoutError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict):
        raise ModelLayoutError(f"{path}: expected a JSON object")
    return data


#: where a pipeline component keeps its configuration, by a part of its class name; any other
#: component (a model) keeps it in config.json
_COMPONENT_FILES = {
    "Scheduler": ("scheduler_config.json",),
    "Tokenizer": ("tokenizer_config.json", "tokenizer.json"),
    "ImageProcessor": ("preprocessor_config.json",),
    "FeatureExtractor": ("preprocessor_config.json",),
}


def _check_components(folder: Path, index: dict[str, object]) -> None:
    """Refuse a pipeline folder that lacks a component its ``model_index.json`` lists, or the
    component's configuration: diffusers would quietly build a default one in its place (an
    empty tokenizer, a text encoder of another shape) that fails much later."""
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or None in entry:
            continue
        kind = str(entry[-1])
        wanted = next((f for part, f in _COMPONENT_FILES.items() if part in kind), ("config.json",))
        if not any(os.path.lexists(folder / name / file) for file in wanted):  # read later
            raise ModelLayoutError(
                f"{folder / name}: {PIPELINE_INDEX} lists the {name} component ({kind}), but "
                f"{name}/{' or '.join(wanted)} is missing; restore that folder as "
                "save_pretrained writes it, or download the model again"
            )


def model_layout(model: str, revision: str | None = None) -> tuple[type[ModelFamily], str, dict]:
    """The family, denoiser attribute and denoiser config of ``model`` (configs only).

    Raises:
        ModelLayoutError: an unsupported family, or a local folder without a component (or its
            configuration) that its ``model_index.json`` lists.
    """
    index = _read_json(model, PIPELINE_INDEX, revision)
    if Path(model).is_dir():
        _check_components(Path(model), index)
    pipeline_class = str(index.get("_class_name", "?"))
    attr = "unet" if "unet" in index else "transformer" if "transformer" in index else None
    if attr is None:
        family_for(pipeline_class, {})  # raises the "unsupported" error
        raise ModelLayoutError(f"{model}: model_index.json names no unet or transformer")
    config = _read_json(model, f"{attr}/config.json", revision)
    return family_for(pipeline_class, config), attr, config


@dataclass(frozen=True)
class SamplingLimits:
    """What a model's pipeline can draw, from its configs.

    Attributes:
        max_steps: the most denoising steps its scheduler can take (None: no scheduler).
        resolution_unit: image sizes must be a multiple of this (the VAE's scale factor times
            the denoiser's patch size), so at least this.
    """

    max_steps: int | None
    resolution_unit: int


#: denoisers whose pipeline packs latents into patches of this size beyond ``patch_size``
_PACKED = {"FluxTransformer2DModel": 2, "ZImageTransformer2DModel": 2}
#: denoisers whose pipeline refuses image sizes that are not a multiple of this
_SIZE_UNIT = {"SanaTransformer2DModel": 32}


def sampling_limits(model: str, revision: str | None = None) -> SamplingLimits:
    """The :class:`SamplingLimits` of ``model`` (configs only, no weights)."""
    index = _read_json(model, PIPELINE_INDEX, revision)
    _, attr, config = model_layout(model, revision)
    patch = int(config.get("patch_size") or 1) * _PACKED.get(str(config.get("_class_name")), 1)
    factor = 1
    if isinstance(index.get("vae"), list) and None not in index["vae"]:
        vae = _read_json(model, "vae/config.json", revision)
        factor = 2 ** (len(vae.get("block_out_channels") or [0]) - 1)
    steps = None
    if isinstance(index.get("scheduler"), list) and None not in index["scheduler"]:
        steps = _max_steps(_read_json(model, "scheduler/scheduler_config.json", revision))
    unit = max(factor * patch, _SIZE_UNIT.get(str(config.get("_class_name")), 1))
    return SamplingLimits(steps, unit)


def load_scheduler(model: str, revision: str | None = None) -> SchedulerMixin | None:
    """The scheduler of ``model`` built from its config alone (None: no scheduler, or one of
    a class diffusers does not know)."""
    import diffusers

    index = _read_json(model, PIPELINE_INDEX, revision)
    if not isinstance(index.get("scheduler"), list) or None in index["scheduler"]:
        return None
    config = _read_json(model, "scheduler/scheduler_config.json", revision)
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    return cls.from_config(config) if cls is not None else None


def _max_steps(config: dict[str, object]) -> int:
    """The most steps a scheduler of ``config`` takes: ``num_train_timesteps``, less where its
    spacing would step past the last trained timestep (``leading`` spacing with
    ``steps_offset: 1`` at 1000 of 1000 steps: an IndexError in the first step)."""
    import diffusers

    trained = int(config.get("num_train_timesteps") or 1000)
    cls = getattr(diffusers, str(config.get("_class_name")), None)
    scheduler = cls.from_config(config) if cls is not None else None
    if scheduler is None or not hasattr(scheduler, "alphas_cumprod"):
        return trained  # flow matching: timesteps are not indices
    for steps in range(trained, max(trained - 8, 0), -1):
        try:
            scheduler.set_timesteps(steps)
        except (ValueError, IndexError):
            continue
        if 0 <= int(scheduler.timesteps.max()) < trained:
            return steps
    return trained - int(config.get("steps_offset") or 0) - 1


def load_denoiser_layout(model: str, revision: str | None = None):
    """The family and the denoiser built from its config on the meta device (no weights)."""
    family, attr, config = model_layout(model, revision)
    import diffusers

    cls = getattr(diffusers, str(config.get("_class_name", "")), None)
    if cls is None:
        raise ModelLayoutError(f"{model}: unknown denoiser class {config.get('_class_name')!r}")
    with torch.device("meta"):
        denoiser = cls.from_config(config)
    return family, denoiser


def weights_missing(model: str, revision: str | None, denoiser_attr: str) -> str | None:
    """Why the denoiser weights of ``model`` cannot be read without a download (a local
    folder without them, a Hub model not in the local cache); None when they are here."""
    folder = Path(model)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(model, revision=revision, local_files_only=True))
        except Exception:  # no cached snapshot of any kind
            return f"{model} is not in the local Hub cache"
    if not any((folder / denoiser_attr).glob("*.safetensors")):
        return f"{model}: no {denoiser_attr}/*.safetensors on this machine"
    return None


def load_pipeline(
    model: str,
    revision: str | None = None,
    dtype: str = "float32",
    variant: str | None = None,
    *,
    allow_pickle: bool = False,
):
    """Load a pipeline with ``DiffusionPipeline.from_pretrained``.

    Only safetensors weights are read unless ``allow_pickle`` is set (``locopack
    --allow-pickle``): unpickling a ``.bin`` file can run arbitrary code, so the user must opt
    in for files they trust.

    Returns:
        ``(pipeline, family)``.
    """
    if dtype not in DTYPES:
        raise ModelLayoutError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    family, _, _ = model_layout(model, revision)
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(
            model,
            revision=revision,
            dtype=DTYPES[dtype],
            variant=variant,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError, SafetensorError) as err:
        offline = hub_unreachable(err, model)
        if offline is not None:
            raise offline from None
        damaged = _damaged_file(str(err))
        if damaged:
            raise ModelLayoutError(
                f"{damaged}: the weights file is damaged (not readable as safetensors); "
                "restore it, or download the model again"
            ) from None
        hint = ""
        if not allow_pickle and "safetensors" in str(err).lower():
            hint = (
                "; locopack reads safetensors weights only — convert the model, or allow "
                "pickle files (locopack --allow-pickle COMMAND ...) only if you trust them"
            )
        raise ModelLayoutError(f"{model}: cannot load the pipeline: {err}{hint}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe, family


def _damaged_file(message: str) -> str | None:
    """The first safetensors file named in ``message`` that exists but cannot be read."""
    from safetensors import safe_open

    for name in dict.fromkeys(re.findall(r"[^'\"\s]+\.safetensors", message)):
        if Path(name).is_file():
            try:
                with safe_open(name, framework="pt") as handle:
                    handle.keys()
            except (SafetensorError, OSError, ValueError):
                return name
    return None
