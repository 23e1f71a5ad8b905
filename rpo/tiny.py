"""Tiny models of the real classes, built offline from a fixed seed: the fastest runs and the unit tests.

Registered with rpo.registry (entry point group `rpo.models`) as `tiny`, `tiny-v`, `tiny-sdxl`, `tiny-clip`, ...
Each builder writes a directory in the same format as the real model on the hub
(diffusers pipeline, transformers model + processor, open_clip local-dir), so the
product loads them through exactly the same code path as real weights. Nothing here
touches the network: the CLIP BPE tokenizer is built from the vocabulary file that
open_clip ships inside its package. Their pictures are noise; they prove the machinery.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

from rpo.artifacts import atomic_dir
from rpo.preprocessing import IMAGENET_MEAN, IMAGENET_STD

SEED = 0
RESOLUTION = 32  # pixels; the tiny VAE downsamples by 2, so latents are 16 x 16
NAMES = ("tiny", "tiny-v", "tiny-sdxl", "tiny-sdxl-v", "tiny-sdxl-vae", "tiny-clip", "tiny-clip-metric", "tiny-dino",
         "tiny-open_clip")
VERSION = "v1"  # bump when a builder changes, so old cached builds are not reused


def cache_root() -> Path:
    """Where models built offline are kept: RPO_CACHE, or ~/.cache/rpo."""
    return Path(os.environ.get("RPO_CACHE", Path.home() / ".cache" / "rpo"))


def location(name: str) -> Path:
    """Where the tiny model `name` is built."""
    if name not in NAMES:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(NAMES)}")
    return cache_root() / "tiny" / VERSION / name


def path(name: str) -> Path:
    """Directory of the tiny model `name`, built on first use (atomically, so parallel workers are safe)."""
    out = location(name)
    if not (out / ".complete").exists():
        with atomic_dir(out) as tmp:
            _BUILDERS[name](tmp)
            (tmp / ".complete").write_text(VERSION)
    return out


def clip_tokenizer(out: Path):
    """A real CLIP BPE tokenizer (same vocabulary as OpenAI CLIP) from open_clip's bundled file."""
    import open_clip.tokenizer as oct
    from transformers import CLIPTokenizer

    bpe = Path(oct.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(oct.bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    src = out / "_bpe"
    src.mkdir(parents=True)
    (src / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (src / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(str(src / "vocab.json"), str(src / "merges.txt"), model_max_length=77)
    return tok, src


def _text_config(**kw):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, **kw,
    )


def _vae(**kw):
    """A VAE of two blocks: 32 px images, 16 x 16 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=RESOLUTION, **kw,
    )


def _build_sd(out: Path, prediction_type: str = "epsilon"):
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=RESOLUTION // 2,
        in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
    )
    vae = _vae()
    text_encoder = CLIPTextModel(_text_config())
    tokenizer, src = clip_tokenizer(out)
    scheduler = ddim_scheduler(prediction_type)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(src)


SDXL_SCALING = 0.13025  # SDXL's VAE scaling factor (SD's is 0.18215): rpo check tells the two latent spaces apart by it


def _build_sdxl(out: Path, prediction_type: str = "epsilon"):
    """SDXL's classes at a tiny width: a U-Net with the text-and-time added embedding, CLIPTextModel and
    CLIPTextModelWithProjection (whose pooled output the U-Net takes), both CLIP BPE tokenizers (the second
    pads with "!", as SDXL's does), SDXL's VAE scaling and its Euler sampler; the shapes of diffusers' own
    SDXL tests, with one transformer layer per block (two cost 1.5 times the compute of the tiny SD)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(SEED + 20)
    time_dim, pooled_dim = 8, 32
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=RESOLUTION // 2, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 1),
        cross_attention_dim=2 * 32,  # both text encoders' hidden states, side by side
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim,  # six time ids and the pooled text
    )
    vae = _vae(scaling_factor=SDXL_SCALING, force_upcast=True)
    text_encoder = CLIPTextModel(_text_config())
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(projection_dim=pooled_dim, hidden_act="gelu"))
    tokenizer, src = clip_tokenizer(out)
    tokenizer_2 = CLIPTokenizer(str(src / "vocab.json"), str(src / "merges.txt"), model_max_length=77, pad_token="!")
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", prediction_type=prediction_type)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(src)


def _build_sdxl_vae(out: Path):
    """A second SDXL-latent VAE, as madebyollin/sdxl-vae-fp16-fix is beside SDXL's own: a VAE folder for `model.vae`."""
    import torch

    torch.manual_seed(SEED + 21)
    _vae(scaling_factor=SDXL_SCALING, force_upcast=False).save_pretrained(out, safe_serialization=True)


def ddim_scheduler(prediction_type: str = "epsilon"):
    """Stable Diffusion 1.x/2.x's noise schedule with a DDIM sampler (the tiny and the world pipelines use it)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def _image_processor(mean=None, std=None):
    from transformers import CLIPImageProcessor

    kw = {} if mean is None else {"image_mean": mean, "image_std": std}
    return CLIPImageProcessor(size={"shortest_edge": RESOLUTION}, crop_size={"height": RESOLUTION, "width": RESOLUTION}, **kw)


def _build_clip(out: Path, seed: int):
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPVisionConfig

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=RESOLUTION, patch_size=8)
    config = CLIPConfig(text_config=_text_config().to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    CLIPModel(config).save_pretrained(out, safe_serialization=True)
    tokenizer, src = clip_tokenizer(out)
    CLIPProcessor(image_processor=_image_processor(), tokenizer=tokenizer).save_pretrained(out)
    shutil.rmtree(src)


def _build_dino(out: Path):
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(SEED + 2)
    config = ViTConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                       image_size=RESOLUTION, patch_size=8)
    ViTModel(config, add_pooling_layer=False).save_pretrained(out, safe_serialization=True)
    _image_processor(list(IMAGENET_MEAN), list(IMAGENET_STD)).save_pretrained(out)


def _build_open_clip(out: Path):
    import open_clip
    import torch
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": RESOLUTION, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    }
    preprocess_cfg = {"size": RESOLUTION, "mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}
    torch.manual_seed(SEED + 3)
    model = open_clip.CLIP(**model_cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "open_clip_model.safetensors")


_BUILDERS = {
    "tiny": lambda out: _build_sd(out, "epsilon"),
    "tiny-v": lambda out: _build_sd(out, "v_prediction"),
    "tiny-sdxl": lambda out: _build_sdxl(out, "epsilon"),
    "tiny-sdxl-v": lambda out: _build_sdxl(out, "v_prediction"),
    "tiny-sdxl-vae": _build_sdxl_vae,
    "tiny-clip": lambda out: _build_clip(out, SEED + 1),
    "tiny-clip-metric": lambda out: _build_clip(out, SEED + 11),
    "tiny-dino": _build_dino,
    "tiny-open_clip": _build_open_clip,
}
