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


def world_guidance() -> float:
    """The guidance scale the world preset samples with: this small model's colours are right
    more often at 4 than at Stable Diffusion's 7.5 (world/README.md)."""
    from rpo import presets

    return float(presets.load("world")["evaluate.guidance_scale"])


@torch.no_grad()
def sample(pipe, prompts: list[str], seed: int, steps: int = 20, guidance: float | None = None) -> np.ndarray:
    """uint8 (n, 32, 32, 3) samples, one seeded generator per image; guidance defaults to the world preset's."""
    guidance = world_guidance() if guidance is None else guidance
    gens = [torch.Generator("cpu").manual_seed(seed * 100_003 + i) for i in range(len(prompts))]
    out = pipe(prompts, generator=gens, num_inference_steps=steps, guidance_scale=guidance, height=32, width=32,
               output_type="np")
    return (out.images * 255 + 0.5).clip(0, 255).astype(np.uint8)


def prompt_following(pipe, judges, n: int = 64, seed: int = 0, steps: int = 20, guidance: float | None = None) -> dict:
    """Judge accuracy per attribute on n samples of full-caption prompts."""
    scenes = [replace(random_scene(np.random.default_rng([seed, i]), "diffusion"), style=None) for i in range(n)]
    images = sample(pipe, [caption(s) for s in scenes], seed, steps, guidance)
    pred = judges.predict(images)
    return {f"sample_{a}": float(np.mean([p == getattr(s, a) for p, s in zip(pred[a], scenes)])) for a in ATTRIBUTES}


def main(argv: list[str] | None = None) -> None:
    """`python -m rpo.world.probe`: the committed base model's prompt following, per attribute."""
    import argparse

    from rpo.generate import load_pipeline
    from rpo.world.judges import Judges
    from rpo.world.pipeline import model_path

    parser = argparse.ArgumentParser(prog="python -m rpo.world.probe", description=main.__doc__)
    parser.add_argument("--n", type=int, default=128, help="prompts per seed")
    parser.add_argument("--seeds", nargs="+", type=int, default=[11, 12, 21, 22])
    parser.add_argument("--guidance", nargs="+", type=float, default=[world_guidance()])
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    args = parser.parse_args(argv)
    from rpo.cli import _quiet_libraries

    _quiet_libraries()
    pipe, judges = load_pipeline("world", torch.device("cpu")), Judges.from_pretrained(model_path("world-judges"))
    for guidance in args.guidance:
        runs = [prompt_following(pipe, judges, args.n, seed, args.steps, guidance) for seed in args.seeds]
        print(f"guidance {guidance:g}, {args.n} x {len(runs)} prompts: "
              + ", ".join(f"{k} {np.mean([r[k] for r in runs]):.3f}" for k in runs[0]), flush=True)


if __name__ == "__main__":
    main()
