"""DeepFloyd IF, stage I (pixel-space cascaded diffusion with a T5 text encoder).

Its attention blocks (``SimpleCrossAttn*``) take the text through *added* key/value projections,
``add_k_proj`` / ``add_v_proj``, whose outputs are concatenated with the image's own keys and
values.  T5 states (4096-d) first pass ``unet.encoder_hid_proj``; the sites consume its output,
which is what :meth:`DeepFloydIF.encode` returns; each site then group-normalizes it with
its own ``norm_cross`` (``site_states``).  A pooled text embedding
(``addition_embed_type="text"``) also enters the time embedding: that path is not a site.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

from .base import LowercasedPrompts, ModelFamily
from .twin_parts import tiny_t5

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


class DeepFloydIF(LowercasedPrompts, ModelFamily):
    """DeepFloyd IF stage I: T5 states at ``add_k_proj``/``add_v_proj`` sites."""

    name: ClassVar[str] = "if"
    pretty_name: ClassVar[str] = "DeepFloyd IF (stage I)"
    pipeline_classes: ClassVar[tuple[str, ...]] = ("IFPipeline",)
    encoder_name: ClassVar[str] = "T5"
    projections: ClassVar[tuple[str, str]] = ("add_k_proj", "add_v_proj")
    has_pooled_text_path: ClassVar[bool] = True

    @classmethod
    def reference_url(cls) -> str:
        return "https://huggingface.co/DeepFloyd/IF-I-XL-v1.0"

    @classmethod
    def matches(cls, pipeline_class: str, denoiser_config: dict[str, object]) -> bool:
        return pipeline_class in cls.pipeline_classes

    @classmethod
    def is_site(cls, module: torch.nn.Module) -> bool:
        return isinstance(getattr(module, "add_k_proj", None), torch.nn.Linear)

    @classmethod
    def encode(cls, pipe: DiffusionPipeline, prompts: list[str]) -> torch.Tensor:
        states, _ = pipe.encode_prompt(
            prompts, do_classifier_free_guidance=False, device=pipe.device, clean_caption=False
        )
        return pipe.unet.encoder_hid_proj(states.to(pipe.unet.dtype))

    @classmethod
    def build_twin(cls, seed: int = 0) -> IFPipeline:
        """IF-I's block layout (resnet level, then simple cross-attention levels) at tiny size."""
        text_encoder, tokenizer = tiny_t5(seed)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=3,
            out_channels=6,
            layers_per_block=1,
            block_out_channels=(16, 32, 32),
            down_block_types=(
                "ResnetDownsampleBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "SimpleCrossAttnDownBlock2D",
            ),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=(
                "SimpleCrossAttnUpBlock2D",
                "SimpleCrossAttnUpBlock2D",
                "ResnetUpsampleBlock2D",
            ),
            cross_attention_dim=32,
            encoder_hid_dim=text_encoder.config.d_model,
            attention_head_dim=8,
            addition_embed_type="text",
            addition_embed_type_num_heads=2,
            cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift",
            norm_num_groups=8,
            act_fn="gelu",
        )
        scheduler = DDPMScheduler(
            num_train_timesteps=1000,
            beta_schedule="squaredcos_cap_v2",
            thresholding=True,
            dynamic_thresholding_ratio=0.95,
            sample_max_value=1.0,
            prediction_type="epsilon",
            variance_type="learned_range",
        )
        return IFPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            watermarker=None,
            requires_safety_checker=False,
        )
