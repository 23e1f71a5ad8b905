"""Models of the paper's architectures with random weights, built offline for the benchmark.

bench/sd21/*.json are the published configurations of stabilityai/stable-diffusion-2-1 (U-Net,
VAE, text encoder, scheduler), of openai/clip-vit-base-patch16 (the CLIP metric, and the
reward model's stand-in: ALIGN-base's tokenizer cannot be built offline, and the two are of
one size) and of facebook/dino-vits16; bench/sdxl/*.json those of stabilityai/stable-diffusion-xl-base-1.0
(U-Net, VAE, both text encoders, scheduler). No weights can be downloaded here and none are needed:
speed and memory depend on the architecture, not on the values of the weights.

`divisor` > 1 divides every width (channels, hidden sizes, norm groups) and keeps every count
(blocks, layers, heads, tokens), so the same code path runs on a CPU in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from rpo.artifacts import atomic_dir
from rpo.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from rpo.tiny import cache_root, clip_tokenizer

CONFIGS = Path(__file__).parent / "sd21"
ARCHS = ("sd21", "sdxl")
# SDXL's added embedding takes six time ids of addition_time_embed_dim and the pooled text (projection_dim)
WIDTHS = ("block_out_channels", "cross_attention_dim", "hidden_size", "intermediate_size", "projection_dim",
          "norm_num_groups", "addition_time_embed_dim", "projection_class_embeddings_input_dim")
VERSION = "v1"  # bump when a builder or a configuration changes


def config(name: str, divisor: int = 1, arch: str = "sd21") -> dict:
    return narrow(json.loads((CONFIGS.with_name(arch) / f"{name}.json").read_text()), divisor)


def narrow(cfg: dict, divisor: int) -> dict:
    """Every width divided by `divisor`, nested configurations included; everything else as published."""
    def scale(v):
        return [x // divisor for x in v] if isinstance(v, list) else v if v is None else v // divisor

    return {k: narrow(v, divisor) if isinstance(v, dict) else scale(v) if k in WIDTHS else v for k, v in cfg.items()}


def build(divisor: int = 1, device: str = "cpu", arch: str = "sd21") -> dict[str, str]:
    """Directories of the base pipeline of `arch` and of the reward, DINO and CLIP models (built once, cached)."""
    root = cache_root() / "bench" / VERSION / f"w{divisor}"
    builders = {"base" if arch == "sd21" else f"base-{arch}": {"sd21": _build_sd21, "sdxl": _build_sdxl}[arch],
                "clip": _build_clip, "dino": _build_dino}
    for name, builder in builders.items():
        out = root / name
        if not (out / ".complete").exists():
            with atomic_dir(out) as tmp, torch.device(device):  # initialising on the GPU is much faster
                torch.manual_seed(0)
                builder(tmp, divisor)
                (tmp / ".complete").write_text(VERSION)
    return {name.split("-")[0]: str(root / name) for name in builders}


def _build_sd21(out: Path, divisor: int) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer, src = clip_tokenizer(out)
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_config(config("vae", divisor)),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_dict(config("text_encoder", divisor))),
        tokenizer=tokenizer, unet=UNet2DConditionModel.from_config(config("unet", divisor)),
        scheduler=DDIMScheduler.from_config(config("scheduler")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(src)


def _build_sdxl(out: Path, divisor: int) -> None:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    def sdxl(name):
        return config(name, divisor, "sdxl")

    tokenizer, src = clip_tokenizer(out)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_config(sdxl("vae")),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_dict(sdxl("text_encoder"))),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig.from_dict(sdxl("text_encoder_2"))),
        tokenizer=tokenizer,
        tokenizer_2=CLIPTokenizer(str(src / "vocab.json"), str(src / "merges.txt"), model_max_length=77, pad_token="!"),
        unet=UNet2DConditionModel.from_config(sdxl("unet")),
        scheduler=EulerDiscreteScheduler.from_config(sdxl("scheduler")),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(src)


def _build_clip(out: Path, divisor: int) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    CLIPModel(CLIPConfig(**config("reward_clip_vit_b16", divisor))).save_pretrained(out, safe_serialization=True)
    tokenizer, src = clip_tokenizer(out)
    images = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    shutil.rmtree(src)


def _build_dino(out: Path, divisor: int) -> None:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    ViTModel(ViTConfig(**config("dino_vits16", divisor)), add_pooling_layer=False).save_pretrained(
        out, safe_serialization=True)
    ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)).save_pretrained(out)
