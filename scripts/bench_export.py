"""Benchmark the exports on a full-size SD-1.5-shaped UNet with random weights.

Prints the LoRA adapter's size relative to the merged denoiser's weights file, and the merged
export's peak memory (resident set size sampled every 5 ms while it runs) relative to the
model's bytes.  Goal: peak <= 1.3x the model.  The text encoder and VAE are tiny (the UNet is
what matters); the edit is LocoEdit-shaped: a rank-r ΔW on all 16 sites' key and value.

    python scripts/bench_export.py [--rank 8] [--dtype float32]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from locopack.delta import WeightDelta
from locopack.export import write_adapter, write_merged
from locopack.models import LoadedBase, get_family
from locopack.models.twin_parts import tiny_clip_text, tiny_vae


class PeakRSS:
    """Samples this process's resident set size in a thread; ``peak`` is the maximum seen."""

    def __init__(self, interval: float = 0.005):
        self.process, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def sd15_pipeline(dtype: torch.dtype) -> StableDiffusionPipeline:
    """SD-1.5's UNet config with random weights, plus a tiny 768-d text encoder and VAE."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
    )
    text_encoder, tokenizer = tiny_clip_text(0, 768)
    return StableDiffusionPipeline(
        vae=tiny_vae(0),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet.to(dtype=dtype),
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=8, help="rank of each random ΔW")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)

    t0 = time.perf_counter()
    pipe = sd15_pipeline(dtype)
    family = get_family("sd1")
    sites = family.sites(pipe.unet)
    model_bytes = sum(
        p.numel() * p.element_size()
        for c in (pipe.unet, pipe.vae, pipe.text_encoder)
        for p in c.parameters()
    )
    deltas = {}
    for site in sites:
        for path in (site.key, site.value):
            w = pipe.unet.get_submodule(path).weight
            deltas[path] = (
                torch.randn(w.shape[0], args.rank) @ torch.randn(args.rank, w.shape[1])
            ) * 1e-3
    delta = WeightDelta(deltas, {"family": "sd1", "denoiser": "unet", "base_fingerprint": "-"})
    params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(
        f"built in {time.perf_counter() - t0:.1f} s: UNet {params:.0f}M "
        f"params ({args.dtype}), {len(sites)} sites, pipeline {model_bytes / 2**30:.2f} GiB"
    )

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        manifest = write_adapter(delta, out, max_rank=64, energy=0.99999999)
        adapter_s = time.perf_counter() - t0
        baseline = psutil.Process().memory_info().rss
        t0 = time.perf_counter()
        with PeakRSS() as meter:
            write_merged(LoadedBase(pipe, family), delta, out / "merged")
        merged_s = time.perf_counter() - t0
        adapter_bytes = (out / "pytorch_lora_weights.safetensors").stat().st_size
        (unet_file,) = (out / "merged" / "unet").glob("*.safetensors")
        unet_bytes = unet_file.stat().st_size

    print(
        f"adapter: {adapter_bytes / 2**20:.2f} MiB in {adapter_s:.1f} s, ranks "
        f"{sorted({m.rank for m in manifest.modules.values()})}, max relative error "
        f"{manifest.max_relative_error:.1e}"
    )
    print(f"merged denoiser file: {unet_bytes / 2**20:.0f} MiB, written in {merged_s:.1f} s")
    print(
        f"adapter / merged denoiser size: {adapter_bytes / unet_bytes:.2e} "
        f"({unet_bytes / adapter_bytes:.0f}x smaller)"
    )
    print(
        f"merged export peak RSS {meter.peak / 2**30:.2f} GiB; "
        f"model {model_bytes / 2**30:.2f} GiB; "
        f"peak / model = {meter.peak / model_bytes:.2f}x (goal <= 1.3x); "
        f"extra over the loaded model {(meter.peak - baseline) / model_bytes:.2f}x"
    )


if __name__ == "__main__":
    main()
