"""The world's diffusion model: a latent U-Net and its text encoder, trained together, with CFG.

Scenes are rendered and encoded by the VAE once (a seeded dataset); captions are drawn
afresh at every step from each scene's attributes (some unsaid), and dropped to "" 10% of
the time so classifier-free guidance works. Epsilon prediction with min-SNR-5 loss weights
(faster convergence at no cost); an EMA of the weights is what gets saved.

The text encoder starts as the world CLIP's text tower, whose contrastive training never
needed shape: frozen, its hidden states for "a red striped circle toy" and "... square toy"
differ by 5 (in norm 62) against about 50 between two colours, and the U-Net learned shapes
slowly (0.47 of samples after 6000 steps). Its transformer layers therefore train with the
U-Net, at a tenth of the rate; the token embeddings stay CLIP's, so every word (and the
unique token of a product run) keeps its place.
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rpo.artifacts import atomic_dir
from rpo.tiny import ddim_scheduler
from rpo_world.data import batch, random_caption
from rpo_world.grammar import Scene
from rpo_world.pretrain_clip import tokens
from rpo_world.pretrain_vae import to_pixels
from rpo_world.training import cpu_autocast, train_loop

log = logging.getLogger("rpo_world")
LATENT = 16
CFG_DROP = 0.1
EMA_DECAY = 0.999
MIN_SNR = 5.0


def build_unet(seed: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    # attention (self and cross) at 8 x 8 and 4 x 4 only: at 16 x 16 it would triple the cost
    unet = UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=4, norm_num_groups=16,
    )
    eager_attention(unet)
    return unet


def eager_attention(unet) -> None:
    """Plain matmul attention: PyTorch's SDPA has a very slow bf16 backward on the CPU."""
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(AttnProcessor())


def text_encoder(clip_dir: Path):
    """The CLIP's text tower as a CLIPTextModel (the weights the reward model reads text with), and its tokenizer."""
    from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

    clip = CLIPModel.from_pretrained(clip_dir, use_safetensors=True, dtype=torch.float32)
    te = CLIPTextModel(clip.config.text_config)
    te.load_state_dict(clip.text_model.state_dict())
    return te.eval().requires_grad_(False), CLIPTokenizer.from_pretrained(clip_dir)


def vae_from(path: Path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32).eval().requires_grad_(False)


@torch.no_grad()
def make_dataset(vae, seed: int, size: int, out: Path) -> None:
    """`size` scenes for the diffusion model: latents (fp16) and the scenes they show."""
    import json

    latents, scenes = [], []
    for i in range(0, size, 1024):
        images, sc, _ = batch(seed + 100, i // 1024, min(1024, size - i), "diffusion")
        for j in range(0, len(images), 256):  # fp32, as the product encodes reference photos
            z = vae.encode(to_pixels(images[j : j + 256])).latent_dist.mean
            latents.append((z * vae.config.scaling_factor).half())
        scenes += [vars(s) for s in sc]
        log.info("dataset: %d / %d scenes", len(scenes), size)
    with atomic_dir(out) as tmp:
        (tmp / "scenes.json").write_text(json.dumps(scenes))
        save_file({"latents": torch.cat(latents).contiguous()}, tmp / "latents.safetensors")


def load_dataset(path: Path) -> tuple[torch.Tensor, list[Scene]]:
    import json

    scenes = [Scene(**s) for s in json.loads((path / "scenes.json").read_text())]
    return load_file(path / "latents.safetensors")["latents"], scenes


def trainable_text_encoder(te):
    """The transformer layers and final norm train; token and position embeddings stay as they are."""
    te.requires_grad_(True)
    te.embeddings.requires_grad_(False)
    return te


def ema_update(ema, model, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1 - decay)


def probe_samples(ema, tok, vae_dir: Path) -> dict:
    """The judges' reading of the EMA U-Net's and text encoder's samples at a checkpoint, once the judges exist
    (logging only)."""
    from rpo_world.judges import Judges
    from rpo_world.pipeline import stable_diffusion
    from rpo_world.probe import prompt_following
    from rpo_world.weights import WEIGHTS

    if not (WEIGHTS / "world-judges" / "model.safetensors").exists():
        return {}
    pipe = stable_diffusion(ema["unet"], ema["text_encoder"], tok, vae_dir)
    return prompt_following(pipe, Judges.from_pretrained(WEIGHTS / "world-judges"), n=64)


def pretrain(cfg: dict, seed: int, work: Path, out: Path, clip_dir: Path, vae_dir: Path) -> None:
    """Writes the U-Net to `out` and the text encoder next to it (`out`/../text_encoder)."""
    data_dir = work / "dataset"
    if not (data_dir / "latents.safetensors").exists():
        make_dataset(vae_from(vae_dir), seed, cfg["dataset_size"], data_dir)
    te, tok = text_encoder(clip_dir)
    latents, scenes = load_dataset(data_dir)
    model = torch.nn.ModuleDict({"unet": build_unet(seed, te.config.hidden_size), "text_encoder": trainable_text_encoder(te)})
    ema = copy.deepcopy(model).requires_grad_(False)
    log.info("U-Net: %.2fM parameters, dataset %d scenes", sum(p.numel() for p in model["unet"].parameters()) / 1e6,
             len(scenes))
    sched = ddim_scheduler()
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    opt = torch.optim.AdamW([
        {"params": model["unet"].parameters()},
        {"params": [p for p in te.parameters() if p.requires_grad], "lr_scale": cfg["text_encoder_lr_scale"]},
    ], lr=cfg["lr"], weight_decay=0.01)

    def loss_fn(step):
        rng = np.random.default_rng([seed, step])
        idx = rng.integers(0, len(scenes), cfg["batch_size"])
        texts = ["" if rng.random() < CFG_DROP else random_caption(scenes[i], rng) for i in idx]
        z = latents[idx].float()
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
        cond = te(**tokens(tok, texts)).last_hidden_state  # fp32, as the pipeline encodes prompts
        with cpu_autocast():
            pred = model["unet"](sched.add_noise(z, noise, t), t, cond).sample.float()
        weight = torch.clamp(snr[t], max=MIN_SNR) / snr[t]
        loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        return loss, {}

    train_loop(model, opt, loss_fn, cfg=cfg, warmup=200, work=work,
               after_step=lambda: ema_update(ema, model, EMA_DECAY), extra={"ema": ema},
               on_checkpoint=lambda s: probe_samples(ema, tok, vae_dir))
    final = {"ema": ema, "raw": model}[cfg.get("export", "ema")].to(torch.float16)
    for name, target in (("unet", out), ("text_encoder", out.parent / "text_encoder")):
        shutil.rmtree(target, ignore_errors=True)
        final[name].save_pretrained(target, safe_serialization=True)
