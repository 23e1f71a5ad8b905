"""The pipeline's stages: one pure function each, explicit inputs and outputs on disk (DESIGN.md section 2).

Each stage checks its inputs (params, subject folder, upstream artifacts) before it loads a
model, and writes every output atomically. torch and the model libraries are imported by the
stages that run models only: labels and select start in a second. Paths inside tables are
relative to the project root, so artifacts stay valid when a DVC remote restores them into
another workspace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from rpo import artifacts as A
from rpo import checkpoints
from rpo.artifacts import atomic_dir
from rpo.context import STAGES, Context, context  # noqa: F401  (re-exported for callers)
from rpo.images import center_square, load_rgb
from rpo.preference import bt_probability, sample_labels
from rpo.prompts import evaluation_prompts, instance_prompt, strip_token
from rpo.reward import harmonic

log = logging.getLogger("rpo")


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _pipeline(ctx: Context, unet_dtype=None):
    from rpo.device import pick_dtype
    from rpo.generate import load_pipeline

    device, model = ctx.device(), ctx.params["model"]
    dtype = pick_dtype(model["dtype"], device, cpu_half=True)
    return load_pipeline(model["base"], device, dtype, unet_dtype=unet_dtype, attention=model["attention"])


def _seeded_jobs(prompts: list[str], per_prompt: int, seed: int):
    from rpo.generate import image_seed

    return [(pi, ii, prompts[pi], image_seed(seed, pi, ii)) for pi in range(len(prompts)) for ii in range(per_prompt)]


def _generate(pipe, jobs, cfg: dict, resolution: int, desc: str, cache=None):
    from rpo.generate import generate

    return generate(pipe, [j[2] for j in jobs], [j[3] for j in jobs], steps=cfg["num_inference_steps"],
                    guidance=cfg["guidance_scale"], resolution=resolution,
                    batch_size=cfg.get("batch_size", len(jobs)), desc=desc, cache=cache)


# --- prior ------------------------------------------------------------------------------


def prior(ctx: Context) -> Path:
    """m prior images per training prompt from the base model, with a manifest."""
    cfg = ctx.params["prior"]
    jobs = _seeded_jobs(ctx.train_prompts(), cfg["images_per_prompt"], ctx.params["seed"])
    log.info("prior: %d images (%d prompts x %d) for %s", len(jobs), len(jobs) // cfg["images_per_prompt"],
             cfg["images_per_prompt"], ctx.subject.name)
    images = _generate(_pipeline(ctx), jobs, cfg, ctx.resolution, "prior")
    out = ctx.paths.prior_dir
    with atomic_dir(out) as tmp:
        rows = []
        for (pi, ii, prompt, seed), image in zip(jobs, images):
            name = f"p{pi:02d}_{ii:03d}.png"
            image.save(tmp / name)
            rows.append({"prompt_index": pi, "prompt": prompt, "image_index": ii, "seed": seed,
                         "path": ctx.rel(out / name), "sha256": _sha256(tmp / name)})
        A.write_table(rows, A.PRIOR_MANIFEST, tmp / "manifest.parquet")
    return out


# --- score ------------------------------------------------------------------------------


def score(ctx: Context) -> Path:
    """ALIGN-I, ALIGN-T and r_lambda_train of every reference x training prompt and every prior image."""
    from rpo.scoring import RewardModel

    manifest = A.read_table(ctx.paths.prior_manifest, A.PRIOR_MANIFEST).to_pandas()
    gen_images = [load_rgb(ctx.root / p) for p in manifest["path"]]
    cfg, prompts = ctx.params["reward"], ctx.train_prompts()
    log.info("score: %d references x %d prompts and %d prior images with %s (%s)",
             len(ctx.subject.images), len(prompts), len(gen_images), cfg["model"], cfg["backend"])
    rm = RewardModel(cfg["backend"], cfg["model"], ctx.subject.load_images(), ctx.token, ctx.device(), cfg["batch_size"])
    ref_i, ref_t = rm.score_references(prompts)
    gen_i, gen_t = rm.score(gen_images, list(manifest["prompt"]))
    rows = [{"kind": "ref", "image": ctx.rel(img), "prompt_index": pi, "prompt": prompt,
             "align_i": float(ref_i[j]), "align_t": float(ref_t[j, pi])}
            for j, img in enumerate(ctx.subject.images) for pi, prompt in enumerate(prompts)]
    rows += [{"kind": "gen", "image": path, "prompt_index": int(pi), "prompt": prompt,
              "align_i": float(ai), "align_t": float(at)}
             for path, pi, prompt, ai, at in zip(manifest["path"], manifest["prompt_index"], manifest["prompt"], gen_i, gen_t)]
    for r in rows:
        r["reward"] = float(harmonic(r["align_i"], r["align_t"], cfg["lambda_train"]))
    return A.write_table(rows, A.REWARDS, ctx.paths.rewards)


# --- labels -----------------------------------------------------------------------------


def make_pairs(rewards: pd.DataFrame) -> pd.DataFrame:
    """One pair per prior image: (reference cycled over the subject's photos, that image, its prompt)."""
    refs = sorted(rewards.loc[rewards["kind"] == "ref", "image"].unique())
    gens = rewards[rewards["kind"] == "gen"].sort_values(["prompt_index", "image"]).reset_index(drop=True)
    ref_reward = rewards[rewards["kind"] == "ref"].set_index(["image", "prompt_index"])["reward"]
    ref_image = [refs[i % len(refs)] for i in range(len(gens))]
    return pd.DataFrame({
        "pair_id": np.arange(len(gens), dtype=np.int32), "ref_image": ref_image, "gen_image": gens["image"],
        "prompt_index": gens["prompt_index"], "prompt": gens["prompt"],
        "r_ref": [ref_reward[(r, pi)] for r, pi in zip(ref_image, gens["prompt_index"])], "r_gen": gens["reward"],
    })


def labels(ctx: Context) -> Path:
    """Bradley-Terry P(x_ref > x_gen | c) per pair and `labels.draws` seeded label draws."""
    cfg = ctx.params["labels"]
    pairs = make_pairs(A.read_table(ctx.paths.rewards, A.REWARDS).to_pandas())
    pairs["p"] = bt_probability(pairs["r_ref"], pairs["r_gen"], cfg["tau"])
    y = sample_labels(pairs["p"], cfg["draws"], ctx.params["seed"])
    table = pd.concat([pairs.assign(draw=d, y=y[d]) for d in range(cfg["draws"])], ignore_index=True)
    log.info("labels: %d pairs x %d draws, mean |P - 0.5| = %.4f, label mean = %.3f",
             len(pairs), cfg["draws"], float((pairs["p"] - 0.5).abs().mean()), float(y.mean()))
    return A.write_table(A.pa.Table.from_pandas(table, preserve_index=False), A.LABELS, ctx.paths.labels)


# --- finetune ---------------------------------------------------------------------------


def _pair_data(ctx: Context, pipe, device):
    from rpo.train import PairData, encode_images, encode_prompts

    table = A.read_table(ctx.paths.labels, A.LABELS).to_pandas()
    manifest = A.read_table(ctx.paths.prior_manifest, A.PRIOR_MANIFEST).to_pandas()
    refs = [ctx.rel(p) for p in ctx.subject.images]
    gens = list(manifest["path"])
    pairs = table[table["draw"] == 0].sort_values("pair_id")
    missing = sorted(set(pairs["ref_image"]) - set(refs)) + sorted(set(pairs["gen_image"]) - set(gens))
    if missing:
        raise A.ArtifactError(f"{ctx.paths.labels}: pairs name images that are not inputs: {missing[:3]}")
    y = table.pivot(index="draw", columns="pair_id", values="y").sort_index()[pairs["pair_id"]].to_numpy()
    ref_images = [center_square(im, ctx.resolution) for im in ctx.subject.load_images()]
    gen_images = [center_square(load_rgb(ctx.root / p), ctx.resolution) for p in gens]
    prompts = ctx.train_prompts()
    return PairData(
        ref_latents=encode_images(pipe.vae, ref_images, device),
        gen_latents=encode_images(pipe.vae, gen_images, device),
        inst_embeds=encode_prompts(pipe, [instance_prompt(ctx.token, ctx.subject.class_noun)], device),
        prompt_embeds=encode_prompts(pipe, prompts, device),
        ref_index=np.array([refs.index(r) for r in pairs["ref_image"]]),
        gen_index=np.array([gens.index(g) for g in pairs["gen_image"]]),
        prompt_index=pairs["prompt_index"].to_numpy(), p=pairs["p"].to_numpy(), labels=y,
    )


def _remove_finetune_outputs(ctx: Context) -> None:
    out = ctx.paths.model_dir
    for stale in (ctx.paths.checkpoints, out / "validation"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in (ctx.paths.validation, ctx.paths.train_log, out / "train.json"):
        stale.unlink(missing_ok=True)


def finetune(ctx: Context) -> Path:
    """Train the U-Net with L = L_sim + L_pref; validate, score and checkpoint every `validate.every` steps."""
    import torch

    from rpo.device import pick_dtype
    from rpo.generate import PromptCache
    from rpo.scoring import RewardModel
    from rpo.train import TrainConfig, train

    for needed in (ctx.paths.labels, ctx.paths.prior_manifest):
        if not needed.exists():
            raise A.ArtifactError(f"{needed}: missing (run the stage that writes it first)")
    cfg, vcfg = TrainConfig.from_params(ctx.params), ctx.params["validate"]
    device = ctx.device()
    pipe = _pipeline(ctx, unet_dtype=torch.float32)  # the master weights, never rounded through model.dtype
    data = _pair_data(ctx, pipe, device)
    prompt_cache = PromptCache(pipe, device)  # validation prompts are fixed: encode them once per run
    rcfg = ctx.params["reward"]
    reward = RewardModel(rcfg["backend"], rcfg["model"], ctx.subject.load_images(), ctx.token, device, rcfg["batch_size"])
    jobs = _seeded_jobs(ctx.train_prompts(), vcfg["images_per_prompt"], ctx.params["seed"] + 1)
    out = ctx.paths.model_dir
    _remove_finetune_outputs(ctx)  # a half-finished earlier run must not mix with this one
    records, log_rows = [], []

    def on_validate(step, unet):
        images = _generate(pipe, jobs, {**vcfg, "batch_size": ctx.params["prior"]["batch_size"]}, ctx.resolution,
                           f"validate@{step}", prompt_cache)
        ai, at = reward.score(images, [j[2] for j in jobs])
        folder = out / "validation" / f"step_{step:05d}"
        with atomic_dir(folder) as tmp:
            for (pi, ii, _, _), im in zip(jobs, images):
                im.save(tmp / f"p{pi:02d}_{ii:03d}.png")
        for (pi, ii, prompt, seed), a, b in zip(jobs, ai, at):
            records.append({"step": step, "prompt_index": pi, "prompt": prompt, "image_index": ii, "seed": seed,
                            "path": ctx.rel(folder / f"p{pi:02d}_{ii:03d}.png"), "align_i": float(a), "align_t": float(b)})
        checkpoints.save(unet, ctx.paths.checkpoints / f"step_{step:05d}")
        if vcfg["keep"] == "selectable":
            checkpoints.prune(ctx.paths.checkpoints, checkpoints.selectable_steps(pd.DataFrame(records)))
        # lambda_val is selection's key, not training's: log raw scores so finetune never reads it
        log.info("validation step %d: ALIGN-I %.4f, ALIGN-T %.4f", step, float(ai.mean()), float(at.mean()))

    start = time.perf_counter()
    ref_dtype = pick_dtype(ctx.params["model"]["dtype"], device, cpu_half=True)
    train(pipe, data, cfg, device=device, ref_dtype=ref_dtype, on_validate=on_validate, on_log=log_rows.append)
    with A.atomic_file(ctx.paths.train_log) as tmp:
        pd.DataFrame(log_rows).to_csv(tmp, index=False)
    A.write_json({"config": vars(cfg), "seconds": time.perf_counter() - start, "device": str(device),
                  "base_model": ctx.params["model"]["base"], "pairs": data.n_pairs}, out / "train.json")
    # written last: select reads it, so its presence means every checkpoint it names is complete
    A.write_table(records, A.VALIDATION, ctx.paths.validation)
    return out


# --- select -----------------------------------------------------------------------------


def select(ctx: Context) -> Path:
    """Pick the checkpoint with the highest mean validation r_lambda_val (or the last one)."""
    from rpo.selection import reward_by_step, select_step

    vcfg = ctx.params["validate"]
    validation = A.read_table(ctx.paths.validation, A.VALIDATION).to_pandas()
    step = select_step(validation, vcfg["lambda_val"], vcfg["early_stopping"])
    source = ctx.paths.checkpoints / f"step_{step:05d}"
    if not checkpoints.is_complete(source):
        raise A.ArtifactError(f"{source}: checkpoint of the selected step is missing (validate.keep=selectable keeps "
                              "the best step of each lambda_val on a 0.01 grid and the last; keep: all keeps every one)")
    curve = reward_by_step(validation, vcfg["lambda_val"]).assign(selected=lambda d: d["step"] == step)
    with atomic_dir(ctx.paths.selected) as tmp:
        checkpoints.copy_folder(source, tmp / "unet")
        (tmp / "base_model.txt").write_text(ctx.params["model"]["base"] + "\n")
    with A.atomic_file(ctx.paths.model_dir / "validation_curve.csv") as tmp:
        curve.to_csv(tmp, index=False)
    log.info("select: step %d (lambda_val %.2f, early stopping %s)", step, vcfg["lambda_val"], vcfg["early_stopping"])
    return A.write_json({
        "subject": ctx.subject.name, "step": step, "lambda_val": vcfg["lambda_val"],
        "early_stopping": vcfg["early_stopping"], "base_model": ctx.params["model"]["base"],
        "unet": ctx.rel(ctx.paths.selected / "unet"), "curve": curve.to_dict(orient="records"),
    }, ctx.paths.selection)


# --- evaluate ---------------------------------------------------------------------------


def load_selected_unet(ctx: Context, base_unet):
    """The selected U-Net: a whole one, or the base U-Net with the selected LoRA weights fused in."""
    return checkpoints.load(ctx.paths.selected / "unet", base_unet)


def evaluate(ctx: Context) -> Path:
    """DreamBench protocol on the selected model (and the base model, for comparison)."""
    from rpo.generate import PromptCache
    from rpo.metrics import MetricModels
    from rpo.scoring import RewardModel
    from rpo.world.judging import world_judge

    selection = A.read_json(ctx.paths.selection)
    ev, lam = ctx.params["evaluate"], ctx.params["validate"]["lambda_val"]
    prompts = evaluation_prompts(ctx.token, ctx.subject.class_noun, ctx.subject.live)
    jobs = _seeded_jobs(prompts, ev["images_per_prompt"], ctx.params["seed"] + 2)
    device = ctx.device()
    pipe = _pipeline(ctx)
    base_unet = pipe.unet
    models = {"selected": load_selected_unet(ctx, base_unet)}
    if ev["base_images"]:
        models["base"] = base_unet
    refs = ctx.subject.load_images()
    metric_models = MetricModels(ev, device)
    ref_emb = metric_models.reference(refs)
    rcfg = ctx.params["reward"]
    reward = RewardModel(rcfg["backend"], rcfg["model"], refs, ctx.token, device, rcfg["batch_size"])
    texts = [strip_token(j[2], ctx.token) for j in jobs]
    prompt_cache = PromptCache(pipe, device)  # one text encoding per prompt for both models
    judge = world_judge(ev, ctx.subject.name, ctx.token)  # None unless evaluate.judges is "world"
    rows, out = [], ctx.paths.eval_dir
    with atomic_dir(out) as tmp:
        for which, unet in models.items():
            pipe.unet = unet
            images = _generate(pipe, jobs, ev, ctx.resolution, f"evaluate {which}", prompt_cache)
            (tmp / which).mkdir()
            m = metric_models.score(images, texts, ref_emb)
            ai, at = reward.score(images, [j[2] for j in jobs])
            if judge:
                judge.add(which, images, [j[2] for j in jobs])
            for k, ((pi, ii, prompt, seed), im) in enumerate(zip(jobs, images)):
                name = f"{which}/p{pi:02d}_{ii:03d}.png"
                im.save(tmp / name)
                rows.append({"model": which, "prompt_index": pi, "prompt": prompt, "image_index": ii, "seed": seed,
                             "path": ctx.rel(out / name), "dino": float(m["dino"][k]), "clip_i": float(m["clip_i"][k]),
                             "clip_t": float(m["clip_t"][k]), "align_i": float(ai[k]), "align_t": float(at[k]),
                             "reward": float(harmonic(float(ai[k]), float(at[k]), lam))})
        A.write_table(rows, A.EVAL_IMAGES, tmp / "images.parquet")
        # the curve this checkpoint was chosen on: the report draws it from eval/ alone
        pd.DataFrame(selection["curve"]).to_csv(tmp / "validation_curve.csv", index=False)
        if judge:
            judge.write(tmp)
    df = pd.DataFrame(rows)
    summary = {which: {**_means(df[df["model"] == which]), **(judge.summary(which) if judge else {})} for which in models}
    train_info = json.loads((ctx.paths.model_dir / "train.json").read_text()) if (ctx.paths.model_dir / "train.json").exists() else {}
    metrics = {
        "subject": ctx.subject.name, "class_noun": ctx.subject.class_noun, "live": ctx.subject.live,
        "selected_step": selection["step"], "lambda_val": lam, "early_stopping": selection["early_stopping"],
        **summary["selected"], "base": summary.get("base"),
        "n_prompts": len(prompts), "images_per_prompt": ev["images_per_prompt"], "n_references": len(refs),
        "train_seconds": train_info.get("seconds"),
        "models": {"base_model": ctx.params["model"]["base"], "reward_model": rcfg["model"], **metric_models.description},
    }
    log.info("evaluate %s: DINO %.4f, CLIP-I %.4f, CLIP-T %.4f, reward %.4f", ctx.subject.name,
             metrics["dino"], metrics["clip_i"], metrics["clip_t"], metrics["reward"])
    return A.write_json(metrics, ctx.paths.metrics)


def _means(df: pd.DataFrame) -> dict:
    return {k: float(df[k].mean()) for k in ("dino", "clip_i", "clip_t", "align_i", "align_t", "reward")}


STAGE_FUNCTIONS = {"prior": prior, "score": score, "labels": labels, "finetune": finetune,
                   "select": select, "evaluate": evaluate}
