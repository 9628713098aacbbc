"""Model builders, tokenizer and losses for ``train_toy_world.py`` (the toy text-to-image world).

Sizes follow the design measured in ``shared/FACTS.md``: a CLIP scorer whose text tower (hidden
64, 2 layers) doubles as the pipeline's text encoder, an ``AutoencoderKL`` 32x32x3 -> 8x8x4 and
a ``UNet2DConditionModel`` with 7 cross-attention (``attn2``) sites of one 64-wide head.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def build_tokenizer(words: tuple[str, ...]):
    """``tiny_clip_tokenizer(words)``, checked: every world word must be one token."""
    from locopack.models.tokenizers import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(words)
    split = {w: tok.tokenize(w) for w in words if len(tok.tokenize(w)) != 1}
    if split:
        raise ValueError(f"world words that are not one token: {split}")
    return tok


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1] (also the CLIP normalisation)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def new_clip(tok):
    """The scorer: CLIP, 32x32 ViT (patch 4, hidden 96, 3 layers); text hidden 64, 2 layers."""
    from transformers import CLIPConfig, CLIPModel

    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            pad_token_id=tok.pad_token_id,
            **ids,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=4,
            hidden_size=96,
            intermediate_size=384,
            num_hidden_layers=3,
            num_attention_heads=4,
        ),
        projection_dim=64,
    )
    torch.manual_seed(1)
    return CLIPModel(config)


def clip_features(clip, pixels=None, ids=None):
    """L2-normalised projected image / text features."""
    if pixels is not None:
        return F.normalize(clip.visual_projection(clip.vision_model(pixels).pooler_output), dim=-1)
    return F.normalize(clip.text_projection(clip.text_model(ids).pooler_output), dim=-1)


def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """-log of the softmax mass on the positives, averaged over rows."""
    masked = logits.masked_fill(~positive, float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)).mean()


def augment(pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur half of the images a little and add noise: generated images are softer."""
    kernel = torch.tensor([1.0, 2.0, 1.0]) / 4
    kernel = (kernel[:, None] * kernel[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(pixels, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    pick = (torch.rand(len(pixels), 1, 1, 1, generator=gen) < 0.5).float()
    noisy = pick * blurred + (1 - pick) * pixels
    return noisy + 0.03 * torch.randn(pixels.shape, generator=gen)


def clip_processor(tok):
    """A CLIP processor (PIL backend: no torchvision needed) matching ``to_pixels``."""
    from transformers import CLIPImageProcessorPil, CLIPProcessor

    images = CLIPImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return CLIPProcessor(image_processor=images, tokenizer=tok)


def text_encoder_from(clip):
    """A ``CLIPTextModel`` carrying the CLIP scorer's text tower (frozen)."""
    from transformers import CLIPTextModel

    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())  # v5: clip.text_model is one
    return encoder.eval().requires_grad_(False)


def caption_states(encoder, tok, captions: list[str]) -> torch.Tensor:
    """(n, 77, hidden) states exactly as ``StableDiffusionPipeline.encode_prompt`` makes them."""
    ids = tok(
        captions,
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return encoder(ids)[0]


def new_vae():
    """``AutoencoderKL`` (32, 64, 64): 32x32x3 -> 8x8x4, about 0.95M parameters."""
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=32,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    )


#: UNet layouts: ``toy``, the FACTS UNet (8x8 latents, (64, 128, 128), 7 ``attn2`` sites;
#: diffusers reads ``attention_head_dim`` as the number of heads); ``deep``, Stable Diffusion
#: 1.5's layout of blocks (three cross-attention down levels of 2 layers, a mid block, three
#: cross-attention up levels of 3: 16 ``attn2`` sites) at (32, 64, 96, 96), one head per site.
UNET_LAYOUTS = {
    "toy": dict(
        layers_per_block=1,
        block_out_channels=(64, 128, 128),
        norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=64,
    ),
    "deep": dict(
        layers_per_block=2,
        block_out_channels=(32, 64, 96, 96),
        norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=1,
    ),
}


def new_unet(cross_dim: int, layout: str = "toy"):
    """A ``UNet2DConditionModel`` for 8x8x4 latents in one of :data:`UNET_LAYOUTS`."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(4)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=cross_dim,
        **UNET_LAYOUTS[layout],
    )


def train_scheduler():
    """Stable Diffusion's noise schedule (scaled-linear betas, 1000 steps)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
