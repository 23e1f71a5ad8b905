"""The world's DINO analogue: a ViT whose CLS token tells objects apart, whatever their context.

Real DINO's CLS similarity is valued because it tracks subject identity; here a ViT is
taught identity directly (linear heads on the CLS token read shape, colour, pattern, mark
and class noun), then saved without its heads in transformers' ViT format, so the
product's DINO metric loads it as it loads facebook/dino-vits16.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from rpo.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from rpo_world.judges import HEADS, targets, to_input
from rpo_world.pretrain_judges import degrade
from rpo_world.canvas import SIZE
from rpo_world.training import cpu_autocast, train_loop

IDENTITY = ("shape", "colour", "pattern", "mark", "noun")


class Identity(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        from transformers import ViTConfig, ViTModel

        torch.manual_seed(seed)
        config = ViTConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           image_size=SIZE, patch_size=4, attn_implementation="eager")
        self.vit = ViTModel(config, add_pooling_layer=False)
        self.heads = nn.Linear(128, sum(len(HEADS[k]) for k in IDENTITY))

    def forward(self, pixels):
        cls = self.vit(pixel_values=pixels).last_hidden_state[:, 0]
        return dict(zip(IDENTITY, self.heads(cls).split([len(HEADS[k]) for k in IDENTITY], 1)))


def imagenet_pixels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] pixels -> ImageNet-normalised, as the saved image processor feeds the ViT."""
    mean, std = (torch.tensor(v)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    return ((x + 1) / 2 - mean) / std


@torch.no_grad()
def identity_accuracy(model: Identity, images, scenes) -> dict:
    logits = model(imagenet_pixels(to_input(images)))
    truth = targets(scenes)
    return {f"acc_{k}": float((logits[k].argmax(1) == truth[k]).float().mean()) for k in IDENTITY}


def pretrain(cfg: dict, seed: int, work: Path, out: Path) -> None:
    from transformers import CLIPImageProcessor

    from rpo_world.data import batch

    model = Identity(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.05)
    eval_images, eval_scenes, _ = batch(seed + 1, 0, 512, "judge")
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(step):
        images, scenes, _ = batch(seed, step, cfg["batch_size"], "judge")
        with cpu_autocast():
            logits = model(imagenet_pixels(degrade(to_input(images), gen)))
        truth = targets(scenes)
        return sum(F.cross_entropy(logits[k].float(), truth[k]) for k in IDENTITY), {}

    train_loop(model, opt, loss_fn, cfg=cfg, warmup=100, work=work,
               on_checkpoint=lambda s: identity_accuracy(model, eval_images, eval_scenes))
    shutil.rmtree(out, ignore_errors=True)
    model.vit.to(torch.float16).save_pretrained(out, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
                       image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(out)
