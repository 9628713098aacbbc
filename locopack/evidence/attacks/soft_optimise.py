"""The soft prompt's optimisation (:mod:`.soft_prompt`): the base model's denoising run to
match, and the Adam steps through the attacked model's denoiser.

:func:`record_trajectory` keeps, for every denoiser call of an unguided run of the concept
prompt on the base model, the call's arguments and its noise prediction; :func:`optimise`
replays chosen calls with the soft prompt's states in place of the prompt's
(:func:`~locopack.hooks.feed.feeding`), whatever the family's call signature.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

import torch

from ...errors import ModelLayoutError
from ...hooks.feed import feeding
from .context import AttackContext
from .feed import single_token, soft_tokens, text_encoders

if TYPE_CHECKING:
    from diffusers.utils import BaseOutput

_T = TypeVar("_T")


def _detached(value: _T) -> _T:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_detached(v) for v in value)
    return value


def _prediction(output: tuple[torch.Tensor, ...] | list[torch.Tensor] | BaseOutput) -> torch.Tensor:
    return output[0] if isinstance(output, tuple | list) else output.sample


@torch.no_grad()
def record_trajectory(ctx: AttackContext, prompt: str, seed: int) -> list[tuple]:
    """``(args, kwargs, prediction)`` of every denoiser call of the base model's unguided run
    of ``prompt`` from ``seed``'s latent, at the evidence's steps and resolution."""
    calls: list[tuple] = []
    denoiser = ctx.denoiser

    def before(_module, args, kwargs):
        calls.append((_detached(args), _detached(kwargs)))

    def after(_module, _args, _kwargs, output):
        calls[-1] = (*calls[-1], _prediction(output).detach().clone())

    size = {"height": ctx.resolution, "width": ctx.resolution} if ctx.resolution else {}
    handles = [
        denoiser.register_forward_pre_hook(before, with_kwargs=True),
        denoiser.register_forward_hook(after, with_kwargs=True),
    ]
    try:
        ctx.pipe(
            prompt=prompt,
            num_inference_steps=ctx.steps,
            guidance_scale=1.0,
            generator=torch.Generator(ctx.pipe.device).manual_seed(seed),
            output_type="latent",
            **size,
            **ctx.family.call_kwargs(),
        )
    finally:
        for handle in handles:
            handle.remove()
    return calls


@contextlib.contextmanager
def _frozen(modules: list[torch.nn.Module]) -> Iterator[None]:
    """The modules' parameters without gradients for the block (restored after)."""
    params = [p for m in modules for p in m.parameters()]
    was = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, was, strict=True):
            p.requires_grad_(flag)


def carries_gradient(ctx: AttackContext, word: str, carrier: str) -> bool:
    """Whether the family's encoding of ``carrier`` carries a gradient to soft tokens
    (DeepFloyd IF's pipeline encodes under ``no_grad``)."""
    vectors = {
        name: torch.zeros(1, e.get_input_embeddings().weight.shape[1], requires_grad=True)
        for name, _, e in text_encoders(ctx.pipe)
    }
    with torch.enable_grad(), soft_tokens(ctx.pipe, word, vectors):
        return ctx.family.given_text(ctx.pipe, [carrier])[0].requires_grad


def trajectory_loss(
    ctx: AttackContext, states: torch.Tensor, pooled: torch.Tensor | None, calls: list[tuple]
) -> torch.Tensor:
    """P4D's objective (:mod:`.soft_prompt`): the summed squared error, over the recorded
    ``calls``, of the model's noise prediction with ``states`` (and ``pooled``) as its text
    against the base model's on the concept prompt."""
    loss = torch.zeros(())
    for args, kwargs, target in calls:
        with feeding(ctx.family, ctx.denoiser, states, pooled):
            predicted = _prediction(ctx.denoiser(*args, **kwargs))
        loss = loss + torch.nn.functional.mse_loss(predicted.float(), target.float())
    return loss


def optimise(ctx, word, start, carrier, trajectory, settings) -> dict[str, torch.Tensor]:
    """The soft prompt {encoder name: (k, D)} after ``settings.steps`` Adam steps on the model
    as it is (see :mod:`.soft_prompt`)."""
    encoders = text_encoders(ctx.pipe)
    vectors, groups = {}, []
    for name, tokenizer, encoder in encoders:
        table = encoder.get_input_embeddings().weight
        ids = torch.tensor([single_token(tokenizer, w) for w in start])
        vectors[name] = table[ids].detach().float().clone().requires_grad_(True)
        groups.append({"params": [vectors[name]], "lr": settings.lr * float(table.detach().std())})
    optimiser = torch.optim.Adam(groups)
    rng = random.Random(settings.seed)
    modules = [e for _, _, e in encoders] + [ctx.denoiser]
    with torch.enable_grad(), _frozen(modules):
        for _ in range(settings.steps):
            chosen = rng.sample(range(len(trajectory)), min(settings.timesteps, len(trajectory)))
            with soft_tokens(ctx.pipe, word, vectors):
                states, pooled = ctx.family.given_text(ctx.pipe, [carrier])
            loss = trajectory_loss(ctx, states, pooled, [trajectory[i] for i in chosen])
            if not loss.requires_grad:  # the sites read the text on a path without gradient
                raise ModelLayoutError(
                    f"{ctx.family.pretty_name}'s prediction carries no gradient to its text here"
                )
            grads = torch.autograd.grad(loss, list(vectors.values()))
            for vector, grad in zip(vectors.values(), grads, strict=True):
                vector.grad = grad
            optimiser.step()
    return {name: v.detach() for name, v in vectors.items()}
