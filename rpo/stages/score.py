"""score: ALIGN-I, ALIGN-T and r_lambda_train of every reference x training prompt and of every prior image."""

from __future__ import annotations

import logging
from pathlib import Path

from rpo import artifacts as A
from rpo.images import load_rgb
from rpo.reward import harmonic
from rpo.prompts import subject_training_prompts
from rpo.stages import StageSpec

log = logging.getLogger("rpo")

STAGE = StageSpec(
    deps=("${paths.subjects}/${item}", "prior_dir"),
    params=("unique_token", "model.resolution", "reward"),
    outs=("rewards",),
    models=("reward.model",),
)


def run(ctx) -> Path:
    from rpo.device import pick_device
    from rpo.scoring import RewardModel

    manifest = A.read_table(ctx.paths.prior_manifest, A.PRIOR_MANIFEST).to_pandas()
    gen_images = [load_rgb(ctx.root / p) for p in manifest["path"]]
    cfg, prompts = ctx.cfg.reward, subject_training_prompts(ctx)
    log.info("score: %d references x %d prompts and %d prior images with %s (%s)",
             len(ctx.subject.images), len(prompts), len(gen_images), cfg.model, cfg.backend)
    rm = RewardModel.of(cfg, ctx.subject.load_images(), ctx.token, pick_device(ctx.cfg.device))
    ref_i, ref_t = rm.score_references(prompts)
    gen_i, gen_t = rm.score(gen_images, list(manifest["prompt"]))
    rows = [{"kind": "ref", "image": ctx.rel(img), "prompt_index": pi, "prompt": prompt,
             "align_i": float(ref_i[j]), "align_t": float(ref_t[j, pi])}
            for j, img in enumerate(ctx.subject.images) for pi, prompt in enumerate(prompts)]
    rows += [{"kind": "gen", "image": path, "prompt_index": int(pi), "prompt": prompt,
              "align_i": float(ai), "align_t": float(at)}
             for path, pi, prompt, ai, at in zip(manifest["path"], manifest["prompt_index"], manifest["prompt"], gen_i, gen_t)]
    for r in rows:
        r["reward"] = float(harmonic(r["align_i"], r["align_t"], cfg.lambda_train))
    return A.write_table(rows, A.REWARDS, ctx.paths.rewards)
