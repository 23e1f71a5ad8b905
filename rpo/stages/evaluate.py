"""evaluate: the DreamBench protocol on the selected model (and the base model, for comparison).

DINO and CLIP-I: mean cosine over all (generated, reference) pairs; CLIP-T: cosine of an image
and its prompt without the unique token; the reward at lambda_val beside them. A judge a plug-in
registers (`evaluate.judges`) adds its own per-image verdicts; their means become metrics too.

Each model's images and raw scores are kept in a cache (.rpo/cache/evaluate/, outside DVC) under
a key of everything they depend on: the U-Net's bytes, the evaluation params, the subject's
photos, the code. A selection that picks a step already evaluated (another lambda_val, an
ablation's row) recomputes only what depends on lambda_val, without loading a model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd

from rpo import artifacts as A
from rpo import registry
from rpo.config import to_dict
from rpo.dreambench import evaluation_prompts
from rpo.reward import harmonic
from rpo.stages import StageSpec

log = logging.getLogger("rpo")

STAGE = StageSpec(
    deps=("${paths.subjects}/${item}", "selected", "selection"),
    params=("seed", "unique_token", "model", "reward.backend", "reward.model", "reward.batch_size", "evaluate",
            "validate.lambda_val", "train.method"),  # train.method: what about.json says the model is
    outs=("eval_dir",),
    metrics=("metrics",),
    models=("model.base", "model.vae", "reward.model", "evaluate.dino", "evaluate.clip"),
)
SCORES = ("dino", "clip_i", "clip_t", "align_i", "align_t")
CACHE = Path(".rpo") / "cache" / "evaluate"


def jobs_of(ctx) -> list[tuple]:
    from rpo.generate import seeded_jobs

    prompts = evaluation_prompts(ctx.token, ctx.subject.class_noun, ctx.subject.live)
    return seeded_jobs(prompts, ctx.cfg.evaluate.images_per_prompt, ctx.cfg.seed + 2)


# --- the cache of measured models -----------------------------------------------------------


def cache_key(ctx, which: str) -> str:
    """Everything a model's evaluation images and raw scores depend on (never lambda_val)."""
    from rpo.deps import stage_code

    c = to_dict(ctx.cfg)
    parts = {
        "which": which, "model": c["model"], "evaluate": {k: v for k, v in c["evaluate"].items() if k != "batch_size"},
        "reward": {k: c["reward"][k] for k in ("backend", "model")}, "seed": c["seed"], "token": c["unique_token"],
        "subject": [ctx.subject.class_noun, ctx.subject.live, *(A.sha256(p) for p in ctx.subject.images)],
        "code": [A.sha256(ctx.root / f) if (ctx.root / f).exists() else f for f in stage_code("evaluate", ctx.root)],
        "machine": [c["device"], os.uname().nodename, os.environ.get("CUDA_VISIBLE_DEVICES", "")],
        "unet": sorted(A.sha256(p) for p in (ctx.paths.selected / "unet").rglob("*") if p.is_file())
        if which == "selected" else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _entry(ctx, which: str) -> Path:
    return ctx.root / CACHE / cache_key(ctx, which)


def measure(ctx, todo: dict[str, Path]) -> None:
    """Generate and score the images of every model in `todo` (which -> cache entry), writing each entry."""
    from rpo import checkpoints
    from rpo.device import pick_device
    from rpo.generate import PromptCache, generate_jobs, stage_pipeline
    from rpo.metrics import MetricModels
    from rpo.prompts import strip_token
    from rpo.scoring import RewardModel

    ev, jobs = ctx.cfg.evaluate, jobs_of(ctx)
    device = pick_device(ctx.cfg.device)
    base = stage_pipeline(ctx.cfg.model, device)
    refs = ctx.subject.load_images()
    metric_models = MetricModels(ev, device)
    ref_emb = metric_models.reference(refs)
    reward = RewardModel.of(ctx.cfg.reward, refs, ctx.token, device)
    prompts, texts = [j[2] for j in jobs], [strip_token(j[2], ctx.token) for j in jobs]
    selected = ctx.paths.selected / "unet"
    # one text encoding per prompt for both models, unless the checkpoint trained text-encoder adapters or a token
    shared_cache = PromptCache(base, device)
    judge = registry.judge(ev.judges, ctx.subject.name, ctx.token)
    for which, entry in todo.items():
        pipe = checkpoints.pipeline(selected, base) if which == "selected" else base
        own_text = which == "selected" and checkpoints.encodes_prompts_anew(selected)
        images = generate_jobs(pipe, jobs, steps=ev.num_inference_steps, guidance=ev.guidance_scale,
                               resolution=ctx.resolution, batch_size=ev.batch_size, desc=f"evaluate {which}",
                               cache=PromptCache(pipe, device) if own_text else shared_cache)
        m = metric_models.score(images, texts, ref_emb)
        ai, at = reward.score(images, prompts)
        with A.atomic_dir(entry) as tmp:
            for (pi, ii, _, _), im in zip(jobs, images):
                im.save(tmp / f"p{pi:02d}_{ii:03d}.png")
            scores = {"dino": m["dino"], "clip_i": m["clip_i"], "clip_t": m["clip_t"], "align_i": ai, "align_t": at}
            pd.DataFrame({k: [float(x) for x in v] for k, v in scores.items()}).to_parquet(tmp / "scores.parquet")
            if judge:
                pd.DataFrame(judge.judge(images, prompts)).to_parquet(tmp / "judges.parquet")
            (tmp / "about.json").write_text(json.dumps(metric_models.description, sort_keys=True))


# --- the stage ----------------------------------------------------------------------------


def verdict_means(rows: pd.DataFrame) -> dict:
    """Mean of each verdict (a yes/no column) over the images that have one: a judge's rates."""
    out = {}
    for col in rows.columns:
        values = rows[col].dropna()
        if len(values) and all(isinstance(v, (bool, int, float)) for v in values):
            out[col] = float(values.astype(float).mean())
    return out


def run(ctx) -> Path:
    selection = A.read_json(ctx.paths.selection)
    ev, lam = ctx.cfg.evaluate, ctx.cfg.validate.lambda_val
    models = ["selected", "base"] if ev.base_images else ["selected"]
    entries = {which: _entry(ctx, which) for which in models}
    todo = {w: e for w, e in entries.items() if not (e / "scores.parquet").exists()}
    if todo:
        measure(ctx, todo)
    else:
        log.info("evaluate: images and scores of %s found in %s; only lambda_val's reward is recomputed",
                 " and ".join(models), CACHE)
    jobs, out = jobs_of(ctx), ctx.paths.eval_dir
    rows, judged, summary = [], [], {}
    with A.atomic_dir(out) as tmp:
        for which, entry in entries.items():
            shutil.copytree(entry, tmp / which, ignore=shutil.ignore_patterns("*.parquet", "*.json"))
            scores = pd.read_parquet(entry / "scores.parquet")
            reward = [float(harmonic(a, t, lam)) for a, t in zip(scores["align_i"], scores["align_t"])]
            for (pi, ii, prompt, seed), s, r in zip(jobs, scores.to_dict(orient="records"), reward):
                rows.append({"model": which, "prompt_index": pi, "prompt": prompt, "image_index": ii, "seed": seed,
                             "path": ctx.rel(out / which / f"p{pi:02d}_{ii:03d}.png"), **s, "reward": r})
            summary[which] = {**{k: float(scores[k].mean()) for k in SCORES}, "reward": sum(reward) / len(reward)}
            if (entry / "judges.parquet").exists():
                verdicts = pd.read_parquet(entry / "judges.parquet")
                summary[which].update(verdict_means(verdicts))
                judged.append(verdicts.assign(model=which))
        A.write_table(rows, A.EVAL_IMAGES, tmp / "images.parquet")
        if judged:
            pd.concat(judged, ignore_index=True).to_parquet(tmp / "judges.parquet")
        # the curve this checkpoint was chosen on: the report draws it from eval/ alone
        pd.DataFrame(selection["curve"]).to_csv(tmp / "validation_curve.csv", index=False)
        description = json.loads((entries["selected"] / "about.json").read_text())
        A.write_json(about(ctx, selection, description), tmp / "about.json")
    # numbers only: `dvc metrics show` and `dvc exp show` stay readable; the words are in about.json
    metrics = {"selected_step": selection["step"], "lambda_val": lam, **summary["selected"],
               **{f"base_{k}": v for k, v in summary.get("base", {}).items()},
               "n_prompts": len({j[0] for j in jobs}), "images_per_prompt": ev.images_per_prompt,
               "n_references": len(ctx.subject.images)}
    log.info("evaluate %s: DINO %.4f, CLIP-I %.4f, CLIP-T %.4f, reward %.4f", ctx.subject.name,
             metrics["dino"], metrics["clip_i"], metrics["clip_t"], metrics["reward"])
    return A.write_json(metrics, ctx.paths.metrics)


def about(ctx, selection: dict, metric_description: dict) -> dict:
    """What the numbers are of: the subject, the selection rule, the models and the preprocessing."""
    return {"subject": ctx.subject.name, "class_noun": ctx.subject.class_noun, "live": ctx.subject.live,
            "early_stopping": selection["early_stopping"], "method": ctx.cfg.train.method,
            "models": {"base_model": ctx.cfg.model.base, "reward_model": ctx.cfg.reward.model, **metric_description}}
