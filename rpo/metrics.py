"""DreamBench metrics (DINO, CLIP-I, CLIP-T), computed directly from embeddings.

DreamBench protocol: DINO = mean cosine of ViT-S/16 DINO CLS embeddings over all
(generated, reference) pairs; CLIP-I the same with CLIP image embeddings; CLIP-T = mean
cosine of CLIP image and prompt without V. Raw cosines, unlike the reward's [0, 1] scores.
(torchmetrics' CLIPScore is not used: it breaks on transformers 5 outputs.)
"""

from __future__ import annotations

import torch

from rpo.encoders import HFImageEncoder, dino_original_transform, dual_encoder
from rpo.preprocessing import describe
from rpo.registry import model_path


def image_similarity(gen_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
    """Per generated image: mean cosine to every reference (the subject metric's mean of means)."""
    return (gen_emb @ ref_emb.T).mean(dim=1)


def text_similarity(gen_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Per generated image: cosine to its own prompt's text embedding (row i against row i)."""
    return (gen_emb * text_emb).sum(dim=-1)


class MetricModels:
    """DINO and CLIP, loaded once per stage; separate from the reward model."""

    def __init__(self, ev, device="cpu"):
        """`ev`: the config's `evaluate` section."""
        transform = None
        if ev.preprocessing == "dino_original":
            from transformers import AutoConfig

            size = AutoConfig.from_pretrained(model_path(ev.dino)).image_size
            transform = dino_original_transform(size)
        self.dino = HFImageEncoder(ev.dino, device, transform=transform)
        self.clip = dual_encoder(ev.clip_backend, ev.clip, device)
        # read back from the loaded processors and transforms: the report states what was done
        self.description = {
            "dino_model": ev.dino, "clip_model": ev.clip, "clip_backend": ev.clip_backend,
            "preprocessing": ev.preprocessing,
            "dino_preprocessing": describe(self.dino) + (" = DINO's evaluation transform" if transform else ""),
            "clip_preprocessing": describe(self.clip),
        }

    def reference(self, refs) -> dict:
        return {"dino": self.dino.embed_images(refs), "clip": self.clip.embed_images(refs)}

    def score(self, images, texts: list[str], ref: dict) -> dict:
        """Per-image DINO, CLIP-I and CLIP-T; `texts` already without the unique token."""
        clip_img = self.clip.embed_images(images)
        return {
            "dino": image_similarity(self.dino.embed_images(images), ref["dino"]),
            "clip_i": image_similarity(clip_img, ref["clip"]),
            "clip_t": text_similarity(clip_img, self.clip.embed_texts(texts)),
        }
