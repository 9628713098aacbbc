"""The LocoGen sweep: score every window of m consecutive sites, pick the one that controls
the attribute (Basu et al., 2024, Sec. 4).

For a window, every probe's original prompt is generated with the altered prompt's states at
the window's sites (:func:`locopack.hooks.joint.swap_windows`: the per-site states of
:mod:`locopack.hooks.cross`, or, in joint-attention transformers, the keys and values of the
altered prompt's text stream) and the image is scored against the reference
prompt.  Erase probes want the lowest score to the original prompt; update probes the highest
score to the target, so the objective is the mean of ``sign * score`` and the chosen window
minimizes it (one window for the whole recipe).

Cost control: seeds and initial noise are shared by all candidates; the text is encoded once
per probe; a fixed block of candidates goes through the denoiser in one batched call
(``batch``, halved whenever the device runs out of memory); a pass may score a subset of the
probes, so that :mod:`locopack.localize.race` can screen windows on a few of them.

Under ``accelerate launch`` the blocks still to score are split round robin over the
processes; each caches what it scored and the scores are gathered onto every process, so
every process ends with the single-process result, and a rerun with any number of processes
reuses every finished window.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from ..distributed import ProcessGroup, gather
from ..hooks.joint import POOLED, swap_windows
from .cache import CandidateCache
from .result import Candidate
from .scorers import Scorer
from .windows import PromptPair

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from ..models.base import ModelFamily


@dataclass(frozen=True)
class Rung:
    """Generation settings of one scoring pass."""

    steps: int
    guidance: float
    seeds: tuple[int, ...]
    resolution: int | None


class Sweep:
    """Scores windows of a loaded pipeline for a list of probes."""

    def __init__(
        self,
        pipe: DiffusionPipeline,
        family: type[ModelFamily],
        pairs: list[PromptPair],
        scorer: Scorer,
        *,
        cache: CandidateCache | None = None,
        cache_key: dict | None = None,
        batch: int = 8,
        progress: bool = True,
        group: ProcessGroup | None = None,
    ):
        self.pipe, self.family, self.pairs, self.scorer = pipe, family, pairs, scorer
        self.denoiser = getattr(pipe, family.denoiser_attr)
        self.site_paths = [s.path for s in family.sites(self.denoiser)]
        self.cache = cache or CandidateCache(None)
        self.cache_key = cache_key or {}
        self.batch = max(1, batch)
        self.progress = progress
        self.group = group or ProcessGroup()
        with torch.no_grad():
            self.original = family.encode(pipe, [p.original for p in pairs])
            self.altered = family.encode(pipe, [p.altered for p in pairs])
            # a joint-attention transformer's pooled path can be swapped alone (a reference
            # line) where it has one (FLUX.2 has none)
            self.altered_pooled = (
                family.encode_pooled(pipe, [p.altered for p in pairs])
                if family.pooled_reference
                else None
            )
        self.original_mask = family.attention_mask(pipe, [p.original for p in pairs])
        self.altered_mask = family.attention_mask(pipe, [p.altered for p in pairs])

    @torch.no_grad()
    def _images(self, k: int, windows: list[list[str]], seed: int, rung: Rung) -> list:
        n = len(windows)
        masks = () if self.altered_mask is None else (self.original_mask[k], self.altered_mask[k])
        size = {"height": rung.resolution, "width": rung.resolution} if rung.resolution else {}
        generators = [torch.Generator(self.pipe.device).manual_seed(seed) for _ in range(n)]
        pooled = {} if self.altered_pooled is None else {"altered_pooled": self.altered_pooled[k]}
        swap = swap_windows(
            self.family, self.denoiser, windows, self.original[k], self.altered[k], *masks, **pooled
        )
        with swap:
            return self.pipe(
                prompt=self.pairs[k].original,
                num_images_per_prompt=n,
                num_inference_steps=rung.steps,
                guidance_scale=rung.guidance,
                generator=generators,
                output_type="pil",
                **size,
                **self.family.call_kwargs(),
            ).images

    @property
    def pooled_window(self) -> list[str] | None:
        """The window that swaps the pooled text path alone, where the family has one that
        can be swapped (joint-attention transformers); else None."""
        return None if self.altered_pooled is None else [POOLED]

    def _score_block(
        self, block: list[int], windows: list, rung: Rung, probes: tuple[int, ...], bar
    ) -> dict[int, dict]:
        """{window index: cache entry} for one batched block; when the device runs out of
        memory, the batch size is halved (for this block and every later one)."""
        if len(block) > self.batch:
            size, found = self.batch, {}
            for start in range(0, len(block), size):
                part = block[start : start + size]
                found.update(self._score_block(part, windows, rung, probes, bar))
            return found
        t0, scores, shown = time.perf_counter(), {i: [] for i in block}, 0
        try:
            for k in probes:
                pair = self.pairs[k]
                for seed in rung.seeds:
                    images = self._images(k, [windows[i] for i in block], seed, rung)
                    values = self.scorer(images, [pair.reference] * len(images))
                    for i, value in zip(block, values, strict=True):
                        scores[i].append(float(value))
                    bar.update(len(block))
                    shown += len(block)
        except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
            if len(block) == 1 or "out of memory" not in str(err).lower():
                raise
            bar.update(-shown)
            self.batch = max(1, len(block) // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            bar.write(f"out of device memory: {self.batch} windows per denoiser call from now on")
            return self._score_block(block, windows, rung, probes, bar)
        seconds = (time.perf_counter() - t0) / len(block)
        return {i: {"scores": scores[i], "seconds": seconds} for i in block}

    def score(
        self,
        windows: list[list[str]],
        rung: Rung,
        label: str = "",
        probes: tuple[int, ...] | None = None,
    ) -> list[Candidate]:
        """Score each window (a list of site paths; ``[]`` is the unaltered baseline,
        :attr:`pooled_window` the pooled path alone) on the
        probes of index ``probes`` (default: all), each with every seed of ``rung``."""
        probes = tuple(range(len(self.pairs))) if probes is None else tuple(probes)
        pairs = [asdict(self.pairs[k]) for k in probes]
        keys = [
            CandidateCache.key(**self.cache_key, rung=asdict(rung), window=w, pairs=pairs)
            for w in windows
        ]
        done = {i: self.cache.get(key) for i, key in enumerate(keys)}
        missing = [i for i, entry in done.items() if entry is None]
        # Windows go through the denoiser in fixed blocks, and a block with any window left is
        # scored whole: each window is always computed in the same batch, so its scores do
        # not depend on the number of processes or on where a killed run stopped.
        blocks = [
            list(range(start, min(start + self.batch, len(windows))))
            for start in range(0, len(windows), self.batch)
        ]
        mine = self.group.share([b for b in blocks if any(done[i] is None for i in b)])
        todo = [i for block in mine for i in block]
        units = len(todo) * len(probes) * len(rung.seeds)
        bar = tqdm(
            total=units,
            desc=label or "localize",
            unit="img",
            disable=not self.progress,
            leave=False,
        )
        for block in mine:
            for i, entry in self._score_block(block, windows, rung, probes, bar).items():
                done[i] = entry
                self.cache.put(keys[i], entry)
        bar.close()
        for share in gather(self.group, {i: done[i] for i in todo}):
            done.update({int(i): entry for i, entry in share.items()})
        signs = [self.pairs[k].sign for k in probes for _ in rung.seeds]
        return [
            Candidate.from_scores(
                windows[i], done[i]["scores"], signs, done[i]["seconds"], cached=i not in missing
            )
            for i in range(len(windows))
        ]
