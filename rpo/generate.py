"""Stable Diffusion (1.x/2.x and XL) loading and batched, seeded image generation.

Each image has its own seed (a CPU generator), so an image is the same whatever the
batch size or device it was drawn with, and regenerating one image needs no others.
Prompts are encoded once per distinct text (and cached across calls when the caller keeps
the cache), so the text encoders never run twice on the same prompt. The model family
(rpo.family) decides the pipeline class and what a prompt's conditioning holds; SDXL's
time ids at generation are the pipeline's own (original = target = the resolution, no crop).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from rpo import family, xla
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
    return load_pipeline(model.base, device, dtype, unet_dtype=unet_dtype, attention=model.attention, vae=model.vae)


def load_pipeline(base: str, device: torch.device, dtype: torch.dtype = torch.float32, *,
                  unet_dtype: torch.dtype | None = None, attention: str = "sdpa", vae: str = "base"):
    """A StableDiffusionPipeline (1.x / 2.x) or StableDiffusionXLPipeline by hub id, local directory or registered
    name, as its model_index.json says (an error naming any other class, before a weight loads); safetensors only.

    `unet_dtype` loads the U-Net in its own precision (fp32 master weights for training) so its
    weights are never rounded through `dtype` first. `vae` replaces the base's VAE (`model.vae`).
    """
    from diffusers.utils import logging as diffusers_logging

    fam = family.detect(base)
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components": noise beside the stage's own bars
    components = {} if vae == "base" else {"vae": load_vae(vae, dtype)}
    pipe = fam.pipeline_class().from_pretrained(
        model_path(base), use_safetensors=True, dtype={"unet": unet_dtype or dtype, "default": dtype},
        **fam.load_options(), **components,
    )
    pipe.set_progress_bar_config(disable=True)
    set_attention(pipe, attention)
    # decode one image at a time: a batch of 512 px decodes would dominate peak memory, for no speed
    pipe.vae.enable_slicing()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 matmuls left (reward encoders, loss)
    return pipe.to(device)


def load_vae(name: str, dtype: torch.dtype):
    """The VAE `model.vae` names: a VAE folder or hub id (madebyollin/sdxl-vae-fp16-fix), or a pipeline's `vae`."""
    from diffusers import AutoencoderKL

    path, subfolder = family.vae_folder(name)
    return AutoencoderKL.from_pretrained(path, subfolder=subfolder, dtype=dtype, use_safetensors=True)


def set_attention(pipe, attention: str) -> None:
    """sdpa: PyTorch's fused attention, fastest on GPUs and, in fp32, on the CPU too;
    eager: the plain softmax(QK^T)V, whose bf16 backward is the faster one on some CPUs."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    for model in (pipe.unet, pipe.vae):
        model.set_attn_processor(AttnProcessor() if attention == "eager" else AttnProcessor2_0())


@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], device) -> torch.Tensor:
    """Text-encoder states of `prompts`, exactly as the pipeline computes them for its own call."""
    return encode_conditioning(pipe, prompts, device)["embeds"]


@torch.no_grad()
def encode_conditioning(pipe, prompts: list[str], device) -> dict[str, torch.Tensor]:
    """Each prompt's whole conditioning as the pipeline computes it: "embeds", and SDXL's "pooled" too."""
    return family.of(pipe).encode(pipe, prompts, device)


class PromptCache:
    """Text conditioning of each distinct prompt (and of the negative prompt), computed on first use.

    The text encoders are frozen, so one cache serves every validation of a training run (unless
    they train adapters: then a validation starts a new cache).
    """

    def __init__(self, pipe, device):
        self.pipe, self.device, self._conds = pipe, device, {}

    def conditioning(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        todo = list(dict.fromkeys(p for p in prompts if p not in self._conds))
        if todo:
            encoded = encode_conditioning(self.pipe, todo, self.device)
            self._conds.update({p: {k: v[i] for k, v in encoded.items()} for i, p in enumerate(todo)})
        return {k: torch.stack([self._conds[p][k] for p in prompts]) for k in self._conds[prompts[0]]}

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        return self.conditioning(prompts)["embeds"]

    def unconditional(self, n: int) -> dict[str, torch.Tensor]:
        """What classifier-free guidance draws against, as the pipeline does for a call without a negative prompt."""
        uncond = self.conditioning([NEGATIVE] * n)
        if family.of(self.pipe).zero_unconditional(self.pipe):
            return {k: torch.zeros_like(v) for k, v in uncond.items()}
        return uncond


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
        text = family.of(pipe).call_inputs(cache.conditioning(chunk_p), cache.unconditional(len(chunk_p)))
        out = pipe(**text, generator=generators, num_inference_steps=steps, guidance_scale=guidance,
                   height=resolution, width=resolution, output_type="pil")
        images.extend(out.images[:n])
        bar.update(n)
    bar.close()
    return images
