"""Stable Diffusion loading and batched, seeded image generation.

Each image has its own seed (a CPU generator), so an image is the same whatever the
batch size or device it was drawn with, and regenerating one image needs no others.
"""

from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from rpo.encoders import resolve

log = logging.getLogger(__name__)


def image_seed(base_seed: int, prompt_index: int, image_index: int) -> int:
    return base_seed * 1_000_003 + prompt_index * 1_000 + image_index


def load_pipeline(base: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """A StableDiffusionPipeline (1.x / 2.x) by hub id, local directory, or tiny name; safetensors only."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        resolve(base), use_safetensors=True, safety_checker=None, requires_safety_checker=False,
        feature_extractor=None, torch_dtype=dtype,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance: float, resolution: int,
             batch_size: int, desc: str = "generate") -> list:
    """One PIL image per (prompt, seed), drawn `batch_size` at a time."""
    assert len(prompts) == len(seeds)
    images = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", leave=False):
        chunk_p, chunk_s = prompts[start : start + batch_size], seeds[start : start + batch_size]
        generators = [torch.Generator("cpu").manual_seed(s) for s in chunk_s]
        out = pipe(chunk_p, generator=generators, num_inference_steps=steps, guidance_scale=guidance,
                   height=resolution, width=resolution, output_type="pil")
        images.extend(out.images)
    return images
