"""Stable Diffusion loading and batched, seeded image generation.

Each image has its own seed (a CPU generator), so an image is the same whatever the
batch size or device it was drawn with, and regenerating one image needs no others.
Prompts are encoded once per distinct text (and cached across calls when the caller keeps
the cache), so the text encoder never runs twice on the same prompt.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from rpo import xla
from rpo.device import pick_dtype
from rpo.registry import model_path

NEGATIVE = ""  # the unconditional text of classifier-free guidance, as the pipeline uses it


def image_seed(base_seed: int, prompt_index: int, image_index: int) -> int:
    return base_seed * 1_000_003 + prompt_index * 1_000 + image_index


def seeded_jobs(prompts: list[str], per_prompt: int, seed: int) -> list[tuple[int, int, str, int]]:
    """(prompt index, image index, prompt, image seed) of `per_prompt` images of every prompt."""
    return [(pi, ii, prompts[pi], image_seed(seed, pi, ii)) for pi in range(len(prompts)) for ii in range(per_prompt)]


def stage_pipeline(model, device, unet_dtype=None):
    """The base pipeline as a stage uses it: `model.dtype` for everything gradient-free (config section `model`)."""
    dtype = pick_dtype(model.dtype, device, cpu_half=True)
    return load_pipeline(model.base, device, dtype, unet_dtype=unet_dtype, attention=model.attention)


def load_pipeline(base: str, device: torch.device, dtype: torch.dtype = torch.float32, *,
                  unet_dtype: torch.dtype | None = None, attention: str = "sdpa"):
    """A StableDiffusionPipeline (1.x / 2.x) by hub id, local directory or registered name; safetensors only.

    `unet_dtype` loads the U-Net in its own precision (fp32 master weights for training) so its
    weights are never rounded through `dtype` first.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()  # "Loading pipeline components": noise beside the stage's own bars
    pipe = StableDiffusionPipeline.from_pretrained(
        model_path(base), use_safetensors=True, safety_checker=None, requires_safety_checker=False,
        feature_extractor=None, dtype={"unet": unet_dtype or dtype, "default": dtype},
    )
    pipe.set_progress_bar_config(disable=True)
    set_attention(pipe, attention)
    # decode one image at a time: a batch of 512 px decodes would dominate peak memory, for no speed
    pipe.vae.enable_slicing()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 matmuls left (reward encoders, loss)
    return pipe.to(device)


def set_attention(pipe, attention: str) -> None:
    """sdpa: PyTorch's fused attention, fastest on GPUs and, in fp32, on the CPU too;
    eager: the plain softmax(QK^T)V, whose bf16 backward is the faster one on some CPUs."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for model in (pipe.unet, pipe.vae):
        model.set_attn_processor(AttnProcessor() if attention == "eager" else AttnProcessor2_0())


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], device) -> torch.Tensor:
    """Text-encoder states of `prompts`, exactly as the pipeline computes them for its own call."""
    embeds, _ = pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
    return embeds


class PromptCache:
    """Text embeddings of each distinct prompt (and of the negative prompt), computed on first use.

    The text encoder is frozen, so one cache serves every validation of a training run.
    """

    def __init__(self, pipe, device):
        self.pipe, self.device, self._embeds = pipe, device, {}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        todo = list(dict.fromkeys(p for p in prompts if p not in self._embeds))
        if todo:
            self._embeds.update(zip(todo, encode_prompts(self.pipe, todo, self.device)))
        return torch.stack([self._embeds[p] for p in prompts])


def generate_jobs(pipe, jobs, *, steps: int, guidance: float, resolution: int, batch_size: int, desc: str,
                  cache: PromptCache | None = None) -> list:
    """The images of `seeded_jobs` (in their order)."""
    return generate(pipe, [j[2] for j in jobs], [j[3] for j in jobs], steps=steps, guidance=guidance,
                    resolution=resolution, batch_size=batch_size, desc=desc, cache=cache)


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], *, steps: int, guidance: float, resolution: int,
             batch_size: int, desc: str = "generate", cache: PromptCache | None = None) -> list:
    """One PIL image per (prompt, seed), drawn `batch_size` at a time; the bar counts images."""
    assert len(prompts) == len(seeds)
    cache = cache or PromptCache(pipe, pipe.device)
    images = []
    bar = tqdm(total=len(prompts), desc=desc, unit="img", leave=False)
    # on XLA every call of one `generate` has the same batch (graphs compile once): see rpo.xla.batches
    for chunk, n in xla.batches(list(zip(prompts, seeds)), batch_size, pipe.device):
        chunk_p, chunk_s = [p for p, _ in chunk], [s for _, s in chunk]
        generators = [torch.Generator("cpu").manual_seed(s) for s in chunk_s]
        out = pipe(prompt_embeds=cache(chunk_p), negative_prompt_embeds=cache([NEGATIVE] * len(chunk_p)),
                   generator=generators, num_inference_steps=steps, guidance_scale=guidance,
                   height=resolution, width=resolution, output_type="pil")
        images.extend(out.images[:n])
        bar.update(n)
    bar.close()
    return images
