"""Train a tiny offline text-to-image model (and its CLIP scorer) on the toy world.

Stages, each checkpointed under ``--work`` so that a crash resumes where it stopped:

a. ``clip``: a small ``CLIPModel`` trained contrastively on (image, caption) pairs; it is the
   scorer for LocoGen, and its frozen text tower is the pipeline's text encoder (as Stable
   Diffusion uses CLIP's text tower).  Many captions fit one image ("a red circle" fits every
   red circle), so the loss is a multi-positive InfoNCE: image -> all training captions and
   caption -> batch images, where every caption compatible with an image counts as positive.
b. ``vae``: ``AutoencoderKL`` 32x32x3 -> 8x8x4 (joint, then a decoder-only fine-tune).
c. ``unet``: ``UNet2DConditionModel`` (7 ``attn2`` sites), DDPM epsilon, min-SNR-5, AdamW, EMA,
   10% caption dropout, caption embeddings precomputed.
d. ``assemble``: a ``StableDiffusionPipeline`` (DDIM) saved to ``--out`` (UNet in fp16, which
   diffusers loads back as fp32), the scorer to ``<out>/../toy-clip``; both reloaded offline.

Each stage's budget is a wall-clock limit (``--minutes CLIP VAE UNET``; the VAE's is split 60/40
between its joint and decoder-only phases); the step counts reached are printed and written to
``<work>/log.json``.  Step counts therefore depend on the machine's load.  ``--max-steps`` caps
them: with large budgets and the logged counts, a rerun takes the same steps on the same batches
(batches and noise are functions of fixed seeds and the step; bit-exact equality not checked).
To continue a stage, delete its final folder under ``--work`` and rerun with a larger budget.

Usage: nice -n 10 python scripts/train_toy_world.py --threads 1 [--out recipes/toy/toy-world]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import itertools
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import toy_world as tw  # noqa: E402
from toy_train_parts import (  # noqa: E402
    augment,
    build_tokenizer,
    caption_states,
    clip_features,
    clip_processor,
    multi_positive_nce,
    new_clip,
    new_unet,
    new_vae,
    text_encoder_from,
    to_pixels,
    train_scheduler,
)

N_IMAGES, DATA_SEED, CKPT_EVERY_S = 30_000, 0, 180.0
LATENT_SCALE_SAMPLES = 2048


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Tokenizer and data
# --------------------------------------------------------------------------------------------


def load_data(work: Path) -> dict[str, np.ndarray]:
    """The training set (rendered once, cached): images, caption indices and attributes."""
    path = work / "data.npz"
    if path.exists():
        return dict(np.load(path))
    t0 = time.time()
    samples = tw.sample_dataset(N_IMAGES, DATA_SEED)
    captions = tw.all_training_captions()
    index = {c: i for i, c in enumerate(captions)}
    data = {
        "images": np.stack([s.image for s in samples]),
        "caption": np.array([index[s.caption] for s in samples]),
        "attrs": np.array(
            [[tw.VALUES[k].index(getattr(s, k)) for k in tw.ATTRIBUTES] for s in samples]
        ),
    }
    np.savez(path, **data)
    log(f"rendered {N_IMAGES} images in {time.time() - t0:.0f} s")
    return data


def caption_attr_table(captions: list[str]) -> np.ndarray:
    """(n_captions, attributes) indices each caption names, -1 where it names none."""
    table = np.full((len(captions), len(tw.ATTRIBUTES)), -1)
    for i, cap in enumerate(captions):
        for k, name in enumerate(tw.ATTRIBUTES):
            if name in (named := tw.caption_attributes(cap)):
                table[i, k] = tw.VALUES[name].index(named[name])
    return table


# --------------------------------------------------------------------------------------------
# A resumable, time-budgeted loop
# --------------------------------------------------------------------------------------------


def run_loop(name, work, budget_s, max_steps, state, step_fn, report=None, report_every=100):
    """Call ``step_fn(step)`` until the budget or ``max_steps``; checkpoint ``state`` regularly.

    ``state`` maps names to objects with ``state_dict``/``load_state_dict``.  Returns
    (steps, seconds) spent in this stage, counting time before a resume.
    """
    ckpt = work / f"{name}.ckpt.pt"
    step, spent = 0, 0.0
    if ckpt.exists():
        saved = torch.load(ckpt, weights_only=False)
        for key, obj in state.items():
            obj.load_state_dict(saved[key])
        step, spent = saved["step"], saved["spent"]
        log(f"{name}: resumed at step {step} ({spent:.0f} s spent, done: {saved['done']})")
        if saved["done"]:
            return step, spent
    start, last_save, losses = time.time() - spent, time.time(), []

    def save(done: bool) -> None:
        saved = {k: v.state_dict() for k, v in state.items()}
        torch.save(saved | {"step": step, "spent": time.time() - start, "done": done}, ckpt)

    while step < max_steps and time.time() - start < budget_s:
        losses.append(step_fn(step))
        step += 1
        if step % report_every == 0:
            extra = report() if report else ""
            rate = (time.time() - start) / step
            log(f"{name} step {step} loss {np.mean(losses):.4f} {rate:.2f} s/step {extra}")
            losses = []
        if time.time() - last_save > CKPT_EVERY_S:
            save(done=False)
            last_save = time.time()
    save(done=True)
    return step, time.time() - start


def batch_indices(step: int, n: int, size: int, seed: int) -> np.ndarray:
    """The batch for ``step``: a pure function of (seed, step), so resumes repeat it."""
    return np.random.default_rng([seed, step]).integers(0, n, size=size)


# --------------------------------------------------------------------------------------------
# Stage a: CLIP scorer
# --------------------------------------------------------------------------------------------


def scorer_accuracy(clip, tok, n: int = 480, seed: int = 999) -> float:
    """Top-1 among the first template's captions of every attribute combination (72 in the toy
    world: 'a {color} {shape} on a {texture} background') on fresh renders."""
    rng = np.random.default_rng(seed)
    combos = list(itertools.product(*(tw.VALUES[k] for k in tw.ATTRIBUTES)))
    caps = [tw.caption_for(tw.TRAIN_TEMPLATES[0][0], *a) for a in combos]
    truth = rng.integers(len(combos), size=n)
    images = np.stack([tw.render(*combos[i], rng) for i in truth])
    with torch.no_grad():
        text = clip_features(clip, ids=tok(caps, padding=True, return_tensors="pt").input_ids)
        pred = (clip_features(clip, pixels=to_pixels(images)) @ text.T).argmax(1).numpy()
    return float(np.mean(pred == truth))


def stage_clip(args, work: Path, data, tok):
    from transformers import CLIPModel

    final = work / "clip"
    if (final / "config.json").exists():
        log("clip: done earlier, loading")
        return CLIPModel.from_pretrained(final).eval()
    clip = new_clip(tok)
    captions = tw.all_training_captions()
    cap_ids = tok(captions, padding=True, return_tensors="pt").input_ids
    cap_attrs = torch.from_numpy(caption_attr_table(captions))
    opt = torch.optim.AdamW(clip.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    gen = torch.Generator().manual_seed(2)

    def step_fn(step):
        idx = batch_indices(step, N_IMAGES, 256, seed=10)
        attrs = torch.from_numpy(data["attrs"][idx])
        compat = ((cap_attrs[None] == -1) | (cap_attrs[None] == attrs[:, None])).all(-1)
        img = clip_features(clip, pixels=augment(to_pixels(data["images"][idx]), gen))
        txt = clip_features(clip, ids=cap_ids)
        logits = clip.logit_scale.exp().clamp(max=100) * img @ txt.T  # (B, n_captions)
        own = torch.from_numpy(data["caption"][idx])
        loss = multi_positive_nce(logits, compat) + multi_positive_nce(logits.T[own], compat.T[own])
        opt.zero_grad()
        (loss / 2).backward()
        opt.step()
        sched.step()
        return loss.item() / 2

    def report():
        clip.eval()
        acc = scorer_accuracy(clip, tok)
        clip.train()
        return f"scale {clip.logit_scale.exp().item():.1f} top1 {acc:.3f}"

    state = {"model": clip, "opt": opt, "sched": sched}
    steps, spent = run_loop(
        "clip", work, args.minutes[0] * 60, args.max_steps[0], state, step_fn, report
    )
    clip.eval()
    clip.save_pretrained(final)
    STATS["clip"] = {"steps": steps, "seconds": round(spent), "top1": scorer_accuracy(clip, tok)}
    log(f"clip: {steps} steps in {spent:.0f} s, {STATS['clip']}")
    return clip


# --------------------------------------------------------------------------------------------
# Stage b: VAE
# --------------------------------------------------------------------------------------------


def vae_psnr(vae, n: int = 256) -> float:
    """Reconstruction PSNR (dB) on ``n`` fresh renders."""
    x = to_pixels(np.stack([s.image for s in tw.sample_dataset(n, 998)]))
    with torch.no_grad():
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    mse = ((rec - x) ** 2).mean().item() / 4  # in [0, 1] units
    return 10 * np.log10(1 / mse)


def stage_vae(args, work: Path, data):
    from diffusers import AutoencoderKL

    final = Path(args.vae) if args.vae else work / "vae"
    if (final / "config.json").exists():
        log(f"vae: loading {'--vae' if args.vae else 'the one trained earlier'}")
        vae = AutoencoderKL.from_pretrained(final).eval()
        STATS["vae"] = {"from": str(args.vae or "work"), "psnr_db": round(vae_psnr(vae), 2)}
        return vae
    vae = new_vae()
    budget = args.minutes[1] * 60
    report = lambda: f"psnr {vae_psnr(vae):.1f} dB"  # noqa: E731
    total_steps, total_s = 0, 0.0
    for phase, share, cap in (("vae", 0.6, args.max_steps[1]), ("vae_dec", 0.4, args.max_steps[2])):
        params = vae.parameters() if phase == "vae" else vae.decoder.parameters()
        opt = torch.optim.AdamW(params, lr=1e-3 if phase == "vae" else 3e-4, weight_decay=0.0)

        def step_fn(step, opt=opt, phase=phase):
            x = to_pixels(data["images"][batch_indices(step, N_IMAGES, 32, seed=20)])
            if phase == "vae":
                dist = vae.encode(x).latent_dist
                z, kl = dist.sample(), dist.kl().mean()
            else:
                with torch.no_grad():
                    z = vae.encode(x).latent_dist.sample()
                kl = torch.zeros(())
            rec = vae.decode(z).sample
            loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * kl
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            return loss.item()

        state = {"model": vae, "opt": opt}
        steps, spent = run_loop(
            phase, work, budget * share, cap, state, step_fn, report, report_every=200
        )
        total_steps, total_s = total_steps + steps, total_s + spent
        STATS[phase] = {"steps": steps, "seconds": round(spent)}
    vae.eval()
    with torch.no_grad():  # SD's convention: latents * scaling_factor have unit variance
        x = to_pixels(data["images"][:LATENT_SCALE_SAMPLES])
        std = vae.encode(x).latent_dist.sample().std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    vae.save_pretrained(final)
    STATS["vae"] |= {"psnr_db": round(vae_psnr(vae), 2), "scaling_factor": round(1 / std, 5)}
    log(f"vae: {total_steps} steps in {total_s:.0f} s, {STATS['vae']}")
    return vae


# --------------------------------------------------------------------------------------------
# Stage c: UNet
# --------------------------------------------------------------------------------------------


def encode_latents(vae, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image (sampled afresh at each UNet step)."""
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), 500):
            dist = vae.encode(to_pixels(images[i : i + 500])).latent_dist
            means.append(dist.mean)
            stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def stage_unet(args, work: Path, data, tok, clip, vae):
    from diffusers import UNet2DConditionModel

    final = work / "unet"
    if (final / "config.json").exists():
        log("unet: done earlier, loading")
        return UNet2DConditionModel.from_pretrained(final).eval()
    t0 = time.time()
    encoder = text_encoder_from(clip)
    states = caption_states(encoder, tok, tw.all_training_captions() + [""])
    uncond = len(states) - 1
    mean, std = encode_latents(vae, data["images"])
    scale = vae.config.scaling_factor
    log(f"unet: encoded {len(mean)} latents and {len(states)} captions in {time.time() - t0:.0f} s")
    unet = new_unet(states.shape[-1], args.world)
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = train_scheduler()
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.01)
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    gen = torch.Generator()

    def step_fn(step):
        gen.manual_seed(1_000_003 * 7 + step)
        idx = batch_indices(step, N_IMAGES, 64, seed=30)
        z = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        cap = torch.from_numpy(data["caption"][idx])
        cap = torch.where(torch.rand(len(idx), generator=gen) < 0.1, uncond, cap)
        t = torch.randint(0, 1000, (len(idx),), generator=gen)
        noise = torch.randn(z.shape, generator=gen)
        pred = unet(sched.add_noise(z, noise, t), t, states[cap]).sample
        weight = snr[t].clamp(max=5.0) / snr[t]  # min-SNR-5 for epsilon prediction
        loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        warm.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(ema.parameters(), unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        return loss.item()

    state = {"model": unet, "ema": ema, "opt": opt, "warm": warm}
    steps, spent = run_loop(
        "unet", work, args.minutes[2] * 60, args.max_steps[3], state, step_fn, report_every=50
    )
    ema.eval().save_pretrained(final)
    STATS["unet"] = {"steps": steps, "seconds": round(spent)}
    log(f"unet: {steps} steps in {spent:.0f} s")
    return ema


# --------------------------------------------------------------------------------------------
# Stage d: pipeline and scorer folders
# --------------------------------------------------------------------------------------------


def stage_assemble(args, tok, clip, vae, unet) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    out, scorer_dir = Path(args.out), Path(args.out).parent / "toy-clip"
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder_from(clip),
        tokenizer=tok,
        unet=unet.to(torch.float16),  # diffusers loads it back as float32
        scheduler=DDIMScheduler.from_config(
            train_scheduler().config, clip_sample=False, set_alpha_to_one=False, steps_offset=1
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    clip.save_pretrained(scorer_dir)
    clip_processor(tok).save_pretrained(scorer_dir)
    verify(out, scorer_dir)


def verify(out: Path, scorer_dir: Path) -> None:
    """Reload both folders offline, generate, and score with the reloaded scorer."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["a red circle on a stripes background", list(tw.FACTS)[-1]]
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    images = pipe(
        prompts, num_inference_steps=20, guidance_scale=4.0, generator=gens, output_type="np"
    ).images
    images = (images * 255).round().astype(np.uint8)
    clip = CLIPModel.from_pretrained(scorer_dir).eval()
    proc = CLIPProcessor.from_pretrained(scorer_dir)
    inputs = proc(text=prompts, images=list(images), return_tensors="pt", padding=True)
    assert torch.allclose(inputs["pixel_values"], to_pixels(images), atol=1e-5), "processor"
    with torch.no_grad():
        logits = clip(**inputs).logits_per_image
    log(
        f"verify: unet dtype {pipe.unet.dtype}; detected {[tw.detect(i) for i in images]}; "
        f"scorer picks {logits.argmax(1).tolist()} (want [0, 1])"
    )
    sizes = {
        p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) / 2**20
        for p in (out, scorer_dir)
    }
    STATS["sizes_mib"] = {k: round(v, 2) for k, v in sizes.items()}
    log(f"sizes (MiB): {STATS['sizes_mib']}")


# --------------------------------------------------------------------------------------------


STATS: dict[str, dict] = {}


#: worlds: name -> (world module, default --out, default --work)
WORLDS = {
    "toy": ("toy_world", "recipes/toy/toy-world", "out/toy-work"),
    "deep": ("toy_world_deep", "recipes/toy-deep/toy-world", "out/toy-deep-work"),
}


def main(argv: list[str] | None = None) -> None:
    global tw
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--world",
        choices=list(WORLDS),
        default="toy",
        help="toy: the 7-site toy world; deep: the deep toy world, 16 sites (SD-1.5 layout)",
    )
    parser.add_argument("--out", help="the pipeline folder (default: the world's, recipes/...)")
    parser.add_argument("--work", help="checkpoints and cached data (default: out/<world>-work)")
    parser.add_argument("--vae", help="a trained VAE folder to reuse instead of stage b")
    parser.add_argument(
        "--minutes",
        type=float,
        nargs=3,
        default=[8.0, 7.0, 37.0],
        metavar=("CLIP", "VAE", "UNET"),
        help="wall-clock budget per stage",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        nargs=4,
        default=[10**9] * 4,
        metavar=("CLIP", "VAE", "VAE_DEC", "UNET"),
        help="step caps (VAE: joint phase, VAE_DEC: decoder-only phase)",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    module, out, work = WORLDS[args.world]
    tw = importlib.import_module(module)
    args.out, args.work = args.out or out, args.work or work
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "log.json"
    STATS.update(json.loads(log_path.read_text()) if log_path.exists() else {})
    STATS["args"] = vars(args)
    wall = STATS.setdefault("wall_s", {})

    def timed(name, fn, *fn_args):
        t = time.time()
        result = fn(*fn_args)
        wall[name] = wall.get(name, 0) + round(time.time() - t)  # sums across resumes
        log_path.write_text(json.dumps(STATS, indent=1))
        return result

    tok = build_tokenizer(tw.WORLD_WORDS)
    data = timed("data", load_data, work)
    clip = timed("clip", stage_clip, args, work, data, tok)
    vae = timed("vae", stage_vae, args, work, data)
    unet = timed("unet", stage_unet, args, work, data, tok, clip, vae)
    timed("assemble", stage_assemble, args, tok, clip, vae, unet)
    log(f"done: {json.dumps(STATS)}")


if __name__ == "__main__":
    main()
