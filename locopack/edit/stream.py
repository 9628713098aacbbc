"""Key/value inputs of joint-attention sites (SD3/SD3.5, FLUX.1), collected while denoising.

In these transformers a site reads its block's own text stream, which depends on the prompt,
the latent, the timestep, the pooled vector and every block before it
(:mod:`locopack.models.joint_attention`), so it cannot be computed from the encoded prompt.
LocoEdit collects it with a forward pre-hook on the site's key projection (the value projection
reads the same input) while the real transformer runs:

- **probes** (:func:`record_probes`): the pipeline generates a group of prompts with each seed
  of ``edit.seeds`` as the localization does (``localize.steps``, ``guidance``, ``resolution``),
  and at the steps ``edit.timesteps`` names (fractions of the run: 0 is the first step, on pure
  noise, 1 the last; the step is the scheduler's) the transformer's arguments for the
  conditional rows are kept: latent, timestep and the rest (FLUX's position ids, guidance).
  Where the negative prompt's call is apart (Chroma), the first call of a step is the
  conditional one.  The run stops after the last of them.
- **columns** (:func:`site_columns`): the transformer is called on every probe with a group's
  text arguments (states; pooled vectors or a text mask where the family has them); the hook
  keeps the input rows at the chosen (prompt, token position) pairs and the call stops as
  soon as the last wanted site has fired.  In FLUX's
  single-stream blocks the input is ``[text; image]``: text positions index its text rows.

The probes are recorded once, on the model as it is: an edit upstream moves a later site's
inputs (which :mod:`locopack.edit.joint` re-collects) but the latents stay those of the
unedited model's trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import ModelLayoutError
from ..models.base import Site

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, SchedulerMixin

    from ..models.base import ModelFamily
    from ..recipe.schema import Recipe

#: transformer arguments with one row per sample; the others (position ids) are shared
_BATCHED = ("hidden_states", "timestep", "guidance")


class _Stop(Exception):
    """Ends a transformer call or a pipeline run once everything needed was recorded."""


@dataclass(frozen=True)
class Group:
    """Prompts run through the transformer together: their text arguments (the family's
    ``text_arguments``, n rows each) and the probes (transformer arguments of n rows) they
    are read at."""

    text: dict[str, torch.Tensor]
    probes: list[dict[str, object]]

    def arguments(self, probe: dict[str, object]) -> dict[str, object]:
        """The transformer's arguments at ``probe`` with this group's text; a text mask that
        the probe's call extended over the image tokens (Chroma's) gets those columns, all
        kept, as the pipeline appends them."""
        found = {**probe, **self.text}
        for name, text in self.text.items():
            wider = probe.get(name)
            if wider is not None and text.ndim == 2 and wider.shape[1] > text.shape[1]:
                image = torch.ones(text.shape[0], wider.shape[1] - text.shape[1])
                found[name] = torch.cat([text, image.to(text.device, text.dtype)], dim=1)
        return found


def denoising_steps(steps: int, timesteps: Sequence[float]) -> list[int]:
    """The step indices of a ``steps``-step run that the fractions ``timesteps`` name."""
    return sorted({round(f * (steps - 1)) for f in timesteps})


def _conditional_rows(kwargs: dict[str, object], n: int) -> dict[str, object]:
    """The transformer arguments of the last ``n`` rows (the conditional half under CFG);
    the text arguments are a group's own (the text mask is kept for its image columns)."""
    probe = {}
    for name, value in kwargs.items():
        if name in ("encoder_hidden_states", "pooled_projections"):
            continue
        if name in _BATCHED and isinstance(value, torch.Tensor) and value.ndim:
            value = value[-n:].clone()
        probe[name] = value
    return probe


@torch.no_grad()
def record_probes(
    pipe: DiffusionPipeline, family: type[ModelFamily], prompts: list[str], recipe: Recipe
) -> list[dict[str, object]]:
    """The transformer's arguments at ``recipe``'s seeds x timesteps while the pipeline
    generates ``prompts`` (n rows each; seed-major, then step order)."""
    settings = recipe.localize
    wanted = denoising_steps(settings.steps, recipe.edit.timesteps)
    size = {"height": settings.resolution, "width": settings.resolution}
    call = {
        "num_inference_steps": settings.steps,
        "guidance_scale": settings.guidance,
        "output_type": "latent",
        **(size if settings.resolution else {}),
        **family.call_kwargs(),
    }
    probes: list[dict[str, object]] = []
    for seed in recipe.edit.seeds:
        generators = [torch.Generator().manual_seed(seed) for _ in prompts]
        probes += _record_run(pipe, prompts, wanted, {**call, "generator": generators})
    return probes


def _record_run(
    pipe: DiffusionPipeline, prompts: list[str], wanted: list[int], call: dict
) -> list[dict]:
    """One pipeline run of ``prompts``, its transformer's arguments kept at the ``wanted``
    steps (the first call of each step: the conditional one, where the negative prompt's
    call is apart); the run ends after the last."""
    probes, seen = [], set()

    def keep(_module, args, kwargs):
        if args:
            raise ModelLayoutError("the pipeline called its transformer with positional inputs")
        i = _step(pipe.scheduler, len(seen))
        if i in seen:
            return
        seen.add(i)
        if i in wanted:
            probes.append(_conditional_rows(kwargs, len(prompts)))
        if i >= wanted[-1]:
            raise _Stop

    handle = pipe.transformer.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        pipe(prompt=prompts, **call)
    except _Stop:
        pass
    finally:
        handle.remove()
    return probes


def _step(scheduler: SchedulerMixin, steps_seen: int) -> int:
    """The index of the denoising step under way: the scheduler's own count where it keeps
    one (diffusers' schedulers advance ``step_index`` in ``step``), else the steps seen."""
    if hasattr(scheduler, "step_index"):
        return scheduler.step_index or 0
    return steps_seen


@torch.no_grad()
def site_columns(
    transformer: torch.nn.Module,
    sites: Sequence[Site],
    group: Group,
    picks: Sequence[tuple[int, int]],
) -> dict[str, torch.Tensor]:
    """{site path: (D, probes x picks) float64} inputs of each site's key projection at the
    (prompt, position) ``picks``, probe-major; ``sites`` in execution order."""
    rows = torch.tensor([k for k, _ in picks], dtype=torch.long)
    positions = torch.tensor([i for _, i in picks], dtype=torch.long)
    found: dict[str, list[torch.Tensor]] = {site.path: [] for site in sites}
    last = sites[-1].path

    def hook_for(site: Site):
        def record(_module, args):
            x = args[0]
            found[site.path].append(x[rows.to(x.device), positions.to(x.device)].double())
            if site.path == last:
                raise _Stop

        return record

    handles = [
        transformer.get_submodule(site.key).register_forward_pre_hook(hook_for(site))
        for site in sites
    ]
    try:
        for probe in group.probes:
            try:
                transformer(**group.arguments(probe))
            except _Stop:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {path: torch.cat(columns).T.cpu() for path, columns in found.items()}
