"""prior: m images per training prompt from the base model, with a manifest (prompt, seed, path, sha256)."""

from __future__ import annotations

import logging
from pathlib import Path

from rpo import artifacts as A
from rpo.prompts import subject_training_prompts
from rpo.stages import StageSpec

log = logging.getLogger("rpo")

STAGE = StageSpec(
    deps=("checked",),
    params=("seed", "unique_token", "model", "prior.images_per_prompt", "prior.num_inference_steps",
            "prior.guidance_scale", "prior.batch_size"),  # not prior.class_images: class_prior's
    outs=("prior_dir",),
    models=("model.base", "model.vae"),
)


def run(ctx) -> Path:
    from rpo.device import pick_device
    from rpo.generate import generate_jobs, seeded_jobs, stage_pipeline

    cfg = ctx.cfg.prior
    jobs = seeded_jobs(subject_training_prompts(ctx), cfg.images_per_prompt, ctx.cfg.seed)
    log.info("prior: %d images (%d prompts x %d) for %s", len(jobs), len(jobs) // cfg.images_per_prompt,
             cfg.images_per_prompt, ctx.subject.name)
    images = generate_jobs(stage_pipeline(ctx.cfg.model, pick_device(ctx.cfg.device)), jobs, steps=cfg.num_inference_steps,
                           guidance=cfg.guidance_scale, resolution=ctx.resolution, batch_size=cfg.batch_size,
                           desc="prior")
    out = ctx.paths.prior_dir
    with A.atomic_dir(out) as tmp:
        rows = []
        for (pi, ii, prompt, seed), image in zip(jobs, images):
            name = f"p{pi:02d}_{ii:03d}.png"
            image.save(tmp / name)
            rows.append({"prompt_index": pi, "prompt": prompt, "image_index": ii, "seed": seed,
                         "path": ctx.rel(out / name), "sha256": A.sha256(tmp / name)})
        A.write_table(rows, A.PRIOR_MANIFEST, tmp / "manifest.parquet")
    return out
