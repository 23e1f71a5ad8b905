"""Does a text-to-image model of the world draw what its prompts say? Its samples, judged.

Prompts are full captions (colour, pattern, shape, noun, context) of random scenes the
diffusion model may have seen; the judges read each sample back, and the accuracy per
attribute is the fraction of samples showing what was asked. `drawn` counts what a model
draws for any prompt, where there is no one right answer to score against.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import torch

from rpo_world.data import random_scene
from rpo_world.grammar import caption

ATTRIBUTES = ("shape", "colour", "pattern", "noun", "context")


def world_guidance() -> float:
    """The guidance scale the world preset samples with: this small model's colours are right
    more often at 4 than at Stable Diffusion's 7.5 (world/README.md)."""
    from rpo import presets

    return float(presets.departures("world")["evaluate.guidance_scale"])


@torch.no_grad()
def sample(pipe, prompts: list[str], seed: int, steps: int = 20, guidance: float | None = None) -> np.ndarray:
    """uint8 (n, 32, 32, 3) samples, one seeded generator per image; guidance defaults to the world preset's."""
    guidance = world_guidance() if guidance is None else guidance
    gens = [torch.Generator("cpu").manual_seed(seed * 100_003 + i) for i in range(len(prompts))]
    out = pipe(prompts, generator=gens, num_inference_steps=steps, guidance_scale=guidance, height=32, width=32,
               output_type="np")
    return (out.images * 255 + 0.5).clip(0, 255).astype(np.uint8)


def probe_scenes(n: int, seed: int, context: str | None = None) -> list:
    """The n scenes a probe prompts for: random, no style; with `context`, the same scenes set in that context."""
    scenes = [replace(random_scene(np.random.default_rng([seed, i]), "diffusion"), style=None) for i in range(n)]
    return [replace(s, context=context) for s in scenes] if context else scenes


def prompt_following(pipe, judges, n: int = 64, seed: int = 0, steps: int = 20, guidance: float | None = None,
                     context: str | None = None) -> dict:
    """Judge accuracy per attribute on n samples of full-caption prompts (all in `context` when given)."""
    scenes = probe_scenes(n, seed, context)
    images = sample(pipe, [caption(s) for s in scenes], seed, steps, guidance)
    pred = judges.predict(images)
    return {f"sample_{a}": float(np.mean([p == getattr(s, a) for p, s in zip(pred[a], scenes)])) for a in ATTRIBUTES}


def drawn(pipe, judges, prompt: str, n: int, seed: int, steps: int = 20, guidance: float | None = None) -> dict:
    """What a model draws for one prompt: per attribute the judges read, how many of n samples show each value
    (most first). For prompts that leave attributes unsaid, or name a subject by its token, where accuracy has no
    ground truth."""
    pred = judges.predict(sample(pipe, [prompt] * n, seed, steps, guidance))
    return {attr: dict(Counter(values).most_common()) for attr, values in pred.items()}


def draws(model: str, prompts: list[str], n: int, seed: int, steps: int, guidance: float | None) -> list[dict]:
    """`rpo-world draws`: `drawn` for each prompt, with `model` a world pipeline by name or folder."""
    pipe, judges = model_and_judges(model)
    guidance = world_guidance() if guidance is None else guidance
    rows = []
    for prompt in prompts:
        counts = drawn(pipe, judges, prompt, n, seed, steps, guidance)
        print(f"{prompt!r}, {n} samples: " + "; ".join(
            f"{a} " + ", ".join(f"{v} {c}" for v, c in counts[a].items()) for a in (*ATTRIBUTES, "mark")), flush=True)
        rows.append({"prompt": prompt, "samples": n, "seed": seed, "steps": steps, "guidance": guidance, **counts})
    return rows


def model_and_judges(model: str = "world"):
    """A world pipeline (by name or folder) on the CPU, and the world's judges."""
    from rpo.generate import load_pipeline
    from rpo_world.judges import Judges
    from rpo_world.weights import path

    return load_pipeline(model, torch.device("cpu")), Judges.from_pretrained(path("world-judges"))


def probe_contexts(names: list[str] | None) -> list[str] | None:
    """`--contexts`: None (the scenes' own contexts), the names given, or every context for "all"."""
    from rpo_world.grammar import CONTEXTS

    return sorted(CONTEXTS) if names and "all" in names else names


def probe(n: int, seeds: list[int], guidances: list[float], steps: int,
          contexts: list[str] | None = None) -> list[dict]:
    """The committed base model's prompt following, per guidance (and per context, each of `contexts` in turn
    replacing the scenes' own): the mean accuracy of each attribute over seeds."""
    pipe, judges = model_and_judges()
    out = []
    for guidance in guidances:
        for context in contexts or [None]:
            runs = [prompt_following(pipe, judges, n, seed, steps, guidance, context) for seed in seeds]
            row = {"guidance": guidance, **({"fixed_context": context} if context else {}), "prompts": n * len(seeds),
                   "steps": steps, **{k.removeprefix("sample_"): float(np.mean([r[k] for r in runs])) for k in runs[0]}}
            print(f"guidance {guidance:g}{f', {context}' if context else ''}, {n} x {len(seeds)} prompts: "
                  + ", ".join(f"{a} {row[a]:.3f}" for a in ATTRIBUTES), flush=True)
            out.append(row)
    return out
