"""Scorers: how well generated images match a text.  LocoGen ranks windows by them.

A scorer is any callable ``scorer(images, texts) -> list[float]`` (one PIL image and one text
per item; higher means a better match).  The default is the CLIP score ``100 * cos(image,
text)`` with any ``CLIPModel`` id or folder.  Unlike CLIPScore (Hessel et al., 2021) it is not
clipped at 0: clipping ties every negative score and would blind the ranking of windows.

Images are preprocessed here (bicubic resize of the short side, center crop, normalization:
what ``CLIPImageProcessor`` does) so the scorer needs no torchvision; the mean and std come from
the model's ``preprocessor_config.json`` (or ``processor_config.json``) when it has one, and are
CLIP's otherwise.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError

from ..errors import ModelLayoutError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _normalization(model: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image mean and std the scorer was trained with."""
    import json
    from pathlib import Path

    for name, key in (
        ("preprocessor_config.json", None),
        ("processor_config.json", "image_processor"),
    ):
        path = Path(model) / name
        if not path.is_file() and not Path(model).exists():
            try:
                from huggingface_hub import hf_hub_download

                path = Path(hf_hub_download(model, name))
            except Exception:  # no such file on the Hub, or offline: try the next one
                continue
        if path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
                config = config.get(key, {}) if key else config
                return tuple(map(float, config["image_mean"])), tuple(
                    map(float, config["image_std"])
                )
            except KeyError:  # no statistics in this file: try the next one
                continue
            except (OSError, ValueError, TypeError, AttributeError) as err:
                raise ModelLayoutError(
                    f"{path}: not a readable processor config ({err}); repair or remove it"
                ) from None
    return CLIP_MEAN, CLIP_STD


class Scorer(Protocol):
    """Scores how well each image matches its text (higher is better)."""

    def __call__(self, images: list[Image.Image], texts: list[str]) -> list[float]: ...


class ClipScorer:
    """CLIP score with a ``CLIPModel`` from a Hub id or a local folder (safetensors only)."""

    def __init__(self, model: str, device: str | torch.device = "cpu", name: str | None = None):
        from transformers import CLIPModel, CLIPTokenizer

        try:
            self.model = CLIPModel.from_pretrained(model, use_safetensors=True).to(device).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(model)
        except (OSError, ValueError, SafetensorError) as err:
            raise ModelLayoutError(
                f"cannot load the CLIP scorer {model!r}: {err}; set localize.scorer to a "
                "CLIPModel id or a local folder holding one"
            ) from None
        self.name = name or model  # what results record: the recipe's name, not a local path
        self.device = torch.device(device)
        self.size = int(self.model.config.vision_config.image_size)
        self.mean, self.std = _normalization(model)

    def _pixels(self, images: list[Image.Image]) -> torch.Tensor:
        batch = []
        for image in images:
            image = image.convert("RGB")
            scale = self.size / min(image.size)
            w, h = (
                max(self.size, round(image.width * scale)),
                max(self.size, round(image.height * scale)),
            )
            image = image.resize((w, h), Image.BICUBIC)
            left, top = (w - self.size) // 2, (h - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
            batch.append(np.asarray(image, dtype=np.float32) / 255.0)
        pixels = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return ((pixels - mean) / std).to(self.device, self.model.dtype)

    @torch.no_grad()
    def text_similarity(self, texts: list[str], reference: str) -> list[float]:
        """100·cos between each text's CLIP text embedding and ``reference``'s (no images)."""
        tokens = self.tokenizer(
            [*texts, reference], padding=True, truncation=True, return_tensors="pt"
        )
        found = self.model.get_text_features(**tokens.to(self.device))
        found = torch.nn.functional.normalize(
            getattr(found, "pooler_output", found).float(), dim=-1
        )
        return (100 * found[:-1] @ found[-1]).tolist()

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], texts: list[str]) -> list[float]:
        tokens = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        text = self.model.get_text_features(**tokens.to(self.device))
        image = self.model.get_image_features(pixel_values=self._pixels(images))
        text = getattr(text, "pooler_output", text)
        image = getattr(image, "pooler_output", image)
        cos = torch.nn.functional.cosine_similarity(image.float(), text.float(), dim=-1)
        return (100 * cos).tolist()
