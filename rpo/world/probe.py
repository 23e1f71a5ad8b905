"""Does a text-to-image model of the world draw what its prompts say? Its samples, judged.

Prompts are full captions (colour, pattern, shape, noun, context) of random scenes the
diffusion model may have seen; the judges read each sample back, and the accuracy per
attribute is the fraction of samples showing what was asked.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from rpo.world.data import random_scene
from rpo.world.grammar import caption

ATTRIBUTES = ("shape", "colour", "pattern", "noun", "context")


@torch.no_grad()
def sample(pipe, prompts: list[str], seed: int, steps: int = 20, guidance: float = 7.5) -> np.ndarray:
    """uint8 (n, 32, 32, 3) samples, one seeded generator per image."""
    gens = [torch.Generator("cpu").manual_seed(seed * 100_003 + i) for i in range(len(prompts))]
    out = pipe(prompts, generator=gens, num_inference_steps=steps, guidance_scale=guidance, height=32, width=32,
               output_type="np")
    return (out.images * 255 + 0.5).clip(0, 255).astype(np.uint8)


def prompt_following(pipe, judges, n: int = 64, seed: int = 0, steps: int = 20, guidance: float = 7.5) -> dict:
    """Judge accuracy per attribute on n samples of full-caption prompts."""
    scenes = [replace(random_scene(np.random.default_rng([seed, i]), "diffusion"), style=None) for i in range(n)]
    images = sample(pipe, [caption(s) for s in scenes], seed, steps, guidance)
    pred = judges.predict(images)
    return {f"sample_{a}": float(np.mean([p == getattr(s, a) for p, s in zip(pred[a], scenes)])) for a in ATTRIBUTES}
