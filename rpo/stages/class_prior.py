"""class_prior: the base model's images of the class prompt ("a photo of k"), DreamBooth's class images.

Prior preservation (train.method dreambooth and custom_diffusion) trains on them beside the references:
L = L_sim + w * L_prior. For the other methods the stage writes an empty manifest and reads, and declares to
DVC, train.method alone: an RPO run never re-runs because a class-image key changed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rpo import artifacts as A
from rpo.config import CLASS_METHODS
from rpo.prompts import class_prompt
from rpo.stages import StageSpec

log = logging.getLogger("rpo")

GENERATION = ("seed", "model", "prior.class_images", "prior.num_inference_steps", "prior.guidance_scale",
              "prior.batch_size")
STAGE = StageSpec(
    deps=("checked",),
    params=("train.method",),
    outs=("class_prior_dir",),
    models=("model.base", "model.vae"),
    params_if=lambda cfg: GENERATION if cfg is None or cfg.train.method in CLASS_METHODS else (),
)
SEED_OFFSET = 3  # prior images use the seed, validation seed + 1, evaluation seed + 2


def run(ctx) -> Path:
    out, cfg = ctx.paths.class_prior_dir, ctx.cfg.prior
    if ctx.cfg.train.method not in CLASS_METHODS:
        log.info("class_prior: train.method %s uses no class images; writing an empty manifest", ctx.cfg.train.method)
        with A.atomic_dir(out) as tmp:
            A.write_table([], A.PRIOR_MANIFEST, tmp / "manifest.parquet")
        return out

    from rpo.device import pick_device
    from rpo.family import require_method_fits
    from rpo.generate import generate_jobs, seeded_jobs, stage_pipeline

    pipe = stage_pipeline(ctx.cfg.model, pick_device(ctx.cfg.device))
    require_method_fits(pipe, ctx.cfg.train.method)
    prompt = class_prompt(ctx.subject.class_noun)
    jobs = seeded_jobs([prompt], cfg.class_images, ctx.cfg.seed + SEED_OFFSET)
    log.info("class_prior: %d images of %r for %s", len(jobs), prompt, ctx.subject.name)
    images = generate_jobs(pipe, jobs, steps=cfg.num_inference_steps, guidance=cfg.guidance_scale,
                           resolution=ctx.resolution, batch_size=cfg.batch_size, desc="class_prior")
    with A.atomic_dir(out) as tmp:
        rows = []
        for (pi, ii, text, seed), image in zip(jobs, images):
            name = f"c{ii:04d}.png"
            image.save(tmp / name)
            rows.append({"prompt_index": pi, "prompt": text, "image_index": ii, "seed": seed,
                         "path": ctx.rel(out / name), "sha256": A.sha256(tmp / name)})
        A.write_table(rows, A.PRIOR_MANIFEST, tmp / "manifest.parquet")
    return out
