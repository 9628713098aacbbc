"""Tiny seeded components shared by the twins of several families.

Each builder reseeds before constructing, so every component is reproducible on its own
(the habit of diffusers' ``get_dummy_components``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers import AutoencoderKL
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from .tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLForConditionalGeneration


def tiny_vae(
    seed: int, latent_channels: int = 4, levels: tuple[int, ...] = (8, 16), **config
) -> AutoencoderKL:
    """A VAE with a level per entry of ``levels`` (its channels; two levels by default: scale
    factor 2) and ``latent_channels`` latent channels; ``config`` adds config values (e.g. the
    ``shift_factor`` that SD3 and FLUX decode with)."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        **config,
        block_out_channels=levels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(levels),
        up_block_types=("UpDecoderBlock2D",) * len(levels),
        latent_channels=latent_channels,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=32,
    )


def tiny_clip_text(seed: int, hidden: int, act: str = "quick_gelu", projection: int = 0):
    """A 2-layer CLIP text encoder (with a projection head when ``projection`` > 0)."""
    tokenizer = tiny_clip_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)
    return model.eval(), tokenizer


def tiny_t5(seed: int, d_model: int = 32):
    """A 2-layer T5 encoder and its tiny tokenizer."""
    tokenizer = tiny_t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval(), tokenizer


def tiny_clip_model(seed: int = 0):
    """A tiny two-tower ``CLIPModel`` (32x32 images, patch 8) and its tokenizer, for scorers."""
    from transformers import CLIPConfig, CLIPModel

    tokenizer = tiny_clip_tokenizer()
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    return model.eval(), tokenizer


def tiny_chat_text(seed: int, kind: str, hidden: int = 32):
    """A 2-layer decoder text model of ``kind`` (``qwen3``: Z-Image's encoder type, ``gemma2``:
    Lumina-2's) and a tiny word-level tokenizer with a chat template."""
    from transformers import Gemma2Config, Gemma2Model, Qwen3Config, Qwen3Model

    from .tokenizers import tiny_chat_tokenizer

    config_class, model_class, kv_heads = {
        "qwen3": (Qwen3Config, Qwen3Model, 2),
        "gemma2": (Gemma2Config, Gemma2Model, 1),
    }[kind]
    tokenizer = tiny_chat_tokenizer()
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=kv_heads,
        head_dim=hidden // 2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return model_class(config).eval(), tokenizer


def tiny_mistral3(seed: int, hidden: int = 16, layers: int = 30):
    """A ``Mistral3ForConditionalGeneration`` (FLUX.2's encoder type) of ``layers`` narrow text
    layers, enough for the hidden layers FLUX.2's pipeline reads by default (10, 20, 30), a
    one-layer vision tower, and a tiny word-level tokenizer with a Mistral chat template."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    from .tokenizers import MISTRAL_MARKERS, MISTRAL_TEMPLATE, tiny_chat_tokenizer

    tokenizer = tiny_chat_tokenizer(template=MISTRAL_TEMPLATE, markers=MISTRAL_MARKERS)
    text = {
        "model_type": "mistral",
        "vocab_size": len(tokenizer) + 1,  # one id beyond the tokenizer's for images
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": hidden // 2,
        "max_position_embeddings": 1024,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "model_type": "pixtral",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "head_dim": hidden // 2,
        "image_size": 32,
        "patch_size": 16,
    }
    config = Mistral3Config(
        text_config=text, vision_config=vision, image_token_index=len(tokenizer)
    )
    torch.manual_seed(seed)
    return Mistral3ForConditionalGeneration(config).eval(), tokenizer


#: the words of Qwen-Image's chat template, whole tokens in its twin's tokenizer
QWEN_IMAGE_TEMPLATE_WORDS = (
    "system describe image by detailing color shape size texture quantity text spatial "
    "relationships objects background , :"
).split()


def tiny_qwen25_vl(
    seed: int, hidden: int = 32
) -> tuple[Qwen2_5_VLForConditionalGeneration, PreTrainedTokenizerFast]:
    """A ``Qwen2_5_VLForConditionalGeneration`` (Qwen-Image's encoder type) of 2 text layers
    and a one-layer vision tower, and a tiny word-level tokenizer with Qwen's chat markers and
    the newline as a token of its own (as Qwen's BPE splits it), so that Qwen-Image's template
    opening is the 34 tokens its pipeline drops."""
    from tokenizers import AddedToken
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from .tokenizers import TWIN_WORDS, tiny_chat_tokenizer

    tokenizer = tiny_chat_tokenizer((*TWIN_WORDS, *QWEN_IMAGE_TEMPLATE_WORDS))
    tokenizer.add_tokens([AddedToken("\n", normalized=False, special=False)])
    vocab = len(tokenizer)  # then the image, video and vision start/end ids
    text = {
        "vocab_size": vocab + 4,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        # multimodal RoPE: temporal, height and width sections of half the head width
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        "max_position_embeddings": 1024,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
    }
    vision = {
        "depth": 1,
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_heads": 2,
        "out_hidden_size": hidden,
        "fullatt_block_indexes": [0],
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=vocab,
        video_token_id=vocab + 1,
        vision_start_token_id=vocab + 2,
        vision_end_token_id=vocab + 3,
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval(), tokenizer
