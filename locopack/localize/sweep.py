"""The LocoGen sweep: score every window of m consecutive sites, pick the one that controls
the attribute (Basu et al., 2024, Sec. 4).

For a window, every probe's original prompt is generated with the altered prompt's states at
the window's sites (:mod:`locopack.intervene`) and the image is scored against the reference
prompt.  Erase probes want the lowest score to the original prompt; update probes the highest
score to the target, so the objective is the mean of ``sign * score`` and the chosen window
minimizes it (one window for the whole recipe).

Cost control: seeds and initial noise are shared by all candidates; the text is encoded once
per probe; a fixed block of candidates goes through the denoiser in one batched call
(``batch``, halved whenever the device runs out of memory); and
``fast`` mode scores every window at a fraction of the steps with one seed, then re-scores
the best few at full settings (successive halving with two rungs).

Under ``accelerate launch`` the blocks still to score are split round robin over the
processes; each caches what it scored and the scores are gathered onto every process, so
every process ends with the single-process result, and a rerun with any number of processes
reuses every finished window.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..distributed import ProcessGroup, gather
from ..intervene import swap_text_states, window_replacements
from .cache import CandidateCache
from .result import Candidate, LocalizationResult
from .scorers import Scorer
from .windows import PromptPair, candidate_windows

#: fast mode: first rung at this fraction of the steps, one seed; keep this many windows
FAST_STEP_FRACTION = 0.2
FAST_KEEP = 3


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
        pipe: Any,
        family: Any,
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
        self.original_mask = family.attention_mask(pipe, [p.original for p in pairs])
        self.altered_mask = family.attention_mask(pipe, [p.altered for p in pairs])

    @torch.no_grad()
    def _images(self, k: int, windows: list[list[str]], seed: int, rung: Rung) -> list:
        n = len(windows)
        replacements = window_replacements(
            self.site_paths, windows, self.original[k], self.altered[k]
        )
        masks = None
        if self.altered_mask is not None:
            masks = window_replacements(
                self.site_paths, windows, self.original_mask[k], self.altered_mask[k]
            )
        size = {"height": rung.resolution, "width": rung.resolution} if rung.resolution else {}
        generators = [torch.Generator(self.pipe.device).manual_seed(seed) for _ in range(n)]
        with swap_text_states(self.denoiser, replacements, masks):
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

    def _score_block(self, block: list[int], windows: list, rung: Rung, bar) -> dict[int, dict]:
        """{window index: cache entry} for one batched block; when the device runs out of
        memory, the batch size is halved (for this block and every later one)."""
        if len(block) > self.batch:
            size, found = self.batch, {}
            for start in range(0, len(block), size):
                found.update(self._score_block(block[start : start + size], windows, rung, bar))
            return found
        t0, scores, shown = time.perf_counter(), {i: [] for i in block}, 0
        try:
            for k, pair in enumerate(self.pairs):
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
            return self._score_block(block, windows, rung, bar)
        seconds = (time.perf_counter() - t0) / len(block)
        return {i: {"scores": scores[i], "seconds": seconds} for i in block}

    def score(self, windows: list[list[str]], rung: Rung, label: str = "") -> list[Candidate]:
        """Score each window (a list of site paths; ``[]`` is the unaltered baseline)."""
        keys = [
            CandidateCache.key(
                **self.cache_key, rung=asdict(rung), window=w, pairs=[asdict(p) for p in self.pairs]
            )
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
        units = len(todo) * len(self.pairs) * len(rung.seeds)
        bar = tqdm(
            total=units,
            desc=label or "localize",
            unit="img",
            disable=not self.progress,
            leave=False,
        )
        for block in mine:
            for i, entry in self._score_block(block, windows, rung, bar).items():
                done[i] = entry
                self.cache.put(keys[i], entry)
        bar.close()
        for share in gather(self.group, {i: done[i] for i in todo}):
            done.update({int(i): entry for i, entry in share.items()})
        signs = [p.sign for p in self.pairs for _ in rung.seeds]
        return [
            Candidate.from_scores(
                windows[i], done[i]["scores"], signs, done[i]["seconds"], cached=i not in missing
            )
            for i in range(len(windows))
        ]


def run_sweep(sweep: Sweep, window: int, rung: Rung, mode: str = "fast") -> LocalizationResult:
    """Score all windows of ``window`` sites and choose the one with the lowest objective.

    In ``fast`` mode the windows are first ranked at ``FAST_STEP_FRACTION`` of the steps with
    the first seed, and only the best ``FAST_KEEP`` are scored at full settings.
    """
    started = time.perf_counter()
    windows = candidate_windows(sweep.site_paths, window)
    timings: dict[str, float] = {}
    screening = None
    finalists = list(range(len(windows)))
    if mode == "fast" and len(windows) > FAST_KEEP:
        cheap = Rung(
            max(1, math.ceil(rung.steps * FAST_STEP_FRACTION)),
            rung.guidance,
            rung.seeds[:1],
            rung.resolution,
        )
        t0 = time.perf_counter()
        screening = sweep.score(windows, cheap, "screen windows")
        timings["screen"] = time.perf_counter() - t0
        order = np.argsort([c.objective for c in screening], kind="stable")
        finalists = sorted(int(i) for i in order[:FAST_KEEP])
    t0 = time.perf_counter()
    scored = sweep.score([windows[i] for i in finalists], rung, "score windows")
    timings["candidates"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline, everything = sweep.score([[], list(sweep.site_paths)], rung, "reference lines")
    timings["references"] = time.perf_counter() - t0
    full = dict(zip(finalists, scored, strict=True))
    candidates = [full.get(i) or screening[i] for i in range(len(windows))]
    best = min(finalists, key=lambda i: (full[i].objective, i))
    timings["total"] = time.perf_counter() - started
    return LocalizationResult(
        candidates=candidates,
        chosen=best,
        baseline=baseline,
        all_sites=everything,
        finalists=finalists,
        screening_rung=None if screening is None else asdict(cheap),
        screening=screening,
        rung=asdict(rung),
        mode=mode,
        window=window,
        site_paths=list(sweep.site_paths),
        pairs=[asdict(p) for p in sweep.pairs],
        timings=timings,
    )
