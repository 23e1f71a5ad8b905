"""The world's Stable Diffusion pipeline: assembled from its parts in memory, and as the `world` directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def stable_diffusion(unet, te, tok, vae_dir: Path):
    """A StableDiffusionPipeline of the world's parts (in memory)."""
    from diffusers import StableDiffusionPipeline

    from rpo.tiny import ddim_scheduler
    from rpo_world.pretrain_unet import vae_from

    pipe = StableDiffusionPipeline(vae=vae_from(vae_dir), text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=ddim_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assemble(models: Path) -> None:
    """The pipeline's remaining parts next to its trained VAE, U-Net and text encoder: tokenizer (the
    world CLIP's), scheduler, model_index.json."""
    import tempfile

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    world = models / "world"
    unet = UNet2DConditionModel.from_pretrained(world / "unet", torch_dtype=torch.float32)
    te = CLIPTextModel.from_pretrained(world / "text_encoder", dtype=torch.float32)
    pipe = stable_diffusion(unet, te, CLIPTokenizer.from_pretrained(models / "world-clip"), world / "vae")
    with tempfile.TemporaryDirectory(dir=models) as tmp:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)
        for part in ("tokenizer", "scheduler", "model_index.json"):
            target = world / part
            if target.is_dir():
                shutil.rmtree(target)
            target.unlink(missing_ok=True)
            shutil.move(Path(tmp) / part, target)
