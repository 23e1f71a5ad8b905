"""The world's VAE: an AutoencoderKL that halves each side (32 px -> 16 x 16 x 4 latents).

Pixel L1 + MSE and a tiny KL term; no perceptual or adversarial loss (nothing to borrow one
from offline, and flat-coloured scenes do not need one). Its scaling factor is set from
the latents' measured spread, as Stable Diffusion's 0.18215 was.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rpo_world.data import batch
from rpo_world.canvas import SIZE
from rpo_world.training import cpu_autocast, train_loop


def build_model(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=SIZE, mid_block_add_attention=False,
    )


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, 32, 32, 3) -> (n, 3, 32, 32) in [-1, 1], as the product's encode_images does."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def quality(vae, images: np.ndarray) -> dict:
    x = to_pixels(images)
    post = vae.encode(x).latent_dist
    rec = vae.decode(post.mean).sample.clamp(-1, 1)
    mse = F.mse_loss((rec + 1) / 2, (x + 1) / 2).item()
    return {"psnr": float(10 * np.log10(1 / mse)), "latent_std": float(post.mean.std())}


def pretrain(cfg: dict, seed: int, work: Path, out: Path) -> None:
    vae = build_model(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["lr"], weight_decay=0.0)
    eval_images = batch(seed + 1, 0, 256, "encoder")[0]
    gen = torch.Generator().manual_seed(seed)

    def loss_fn(step):
        x = to_pixels(batch(seed, step, cfg["batch_size"], "encoder")[0])
        with cpu_autocast():
            post = vae.encode(x).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
            rec = vae.decode(z).sample.float()
        rec_loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        return rec_loss + cfg["kl_weight"] * kl, {"kl": float(kl)}

    train_loop(vae, opt, loss_fn, cfg=cfg, warmup=100, work=work,
               on_checkpoint=lambda s: quality(vae, eval_images))
    q = quality(vae, eval_images)
    vae.register_to_config(scaling_factor=round(1.0 / q["latent_std"], 5))
    shutil.rmtree(out, ignore_errors=True)
    vae.to(torch.float16).save_pretrained(out, safe_serialization=True)
