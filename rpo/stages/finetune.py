"""finetune: train with `train.method` (RPO: L = L_sim + L_pref; or a baseline, rpo.methods); validate, score and
checkpoint every `validate.every` steps.

Validation records raw ALIGN-I and ALIGN-T per image, never a reward at some lambda: lambda_val
is selection's key, so changing it re-runs `select` and `evaluate`, never training.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from rpo import artifacts as A
from rpo import checkpoints
from rpo.images import center_crop_top_left, center_square, load_rgb
from rpo.config import train_keys
from rpo.prompts import instance_prompt, subject_training_prompts
from rpo.stages import StageSpec

log = logging.getLogger("rpo")
RESUME = Path(".rpo") / "resume"


def _params_if(cfg) -> tuple[str, ...]:
    """The `train` keys of the run's method (another method's keys never re-run it); a numeric validate.keep prunes
    all but the checkpoint select would pick, so it then reads select's keys too."""
    if cfg is None:
        return ("train", "validate.lambda_val", "validate.early_stopping")
    keep = ("validate.lambda_val", "validate.early_stopping") if isinstance(cfg.validate.keep, int) else ()
    return train_keys(cfg.train.method) + keep


STAGE = StageSpec(
    deps=("${paths.subjects}/${item}", "prior_dir", "class_prior_dir", "labels"),
    params=("seed", "unique_token", "model", "prior.batch_size", "reward.backend", "reward.model",
            "reward.batch_size", "validate.every", "validate.at_start", "validate.images_per_prompt",
            "validate.num_inference_steps", "validate.guidance_scale", "validate.keep"),
    outs=("checkpoints", "validation_images", "validation"),
    plots=(("train_log", "step", "loss"),),
    params_if=_params_if,
    models=("model.base", "model.vae", "reward.model"),
)


def pair_data(ctx, pipe, device):
    """The labelled pairs as the training loop samples them: latents and text conditioning computed once; with
    prior preservation the class images too, and for the methods that learn a token the instance prompt's ids."""
    from rpo.train import PairData, encode_images

    table = A.read_table(ctx.paths.labels, A.LABELS).to_pandas()
    manifest = A.read_table(ctx.paths.prior_manifest, A.PRIOR_MANIFEST).to_pandas()
    refs = [ctx.rel(p) for p in ctx.subject.images]
    gens = list(manifest["path"])
    pairs = table[table["draw"] == 0].sort_values("pair_id")
    missing = sorted(set(pairs["ref_image"]) - set(refs)) + sorted(set(pairs["gen_image"]) - set(gens))
    if missing:
        raise A.ArtifactError(f"{ctx.paths.labels}: pairs name images that are not inputs: {missing[:3]}")
    y = table.pivot(index="draw", columns="pair_id", values="y").sort_index()[pairs["pair_id"]].to_numpy()
    ref_photos = ctx.subject.load_images()
    gen_photos = [load_rgb(ctx.root / p) for p in gens]
    return PairData(
        ref_latents=encode_images(pipe.vae, [center_square(im, ctx.resolution) for im in ref_photos], device),
        gen_latents=encode_images(pipe.vae, [center_square(im, ctx.resolution) for im in gen_photos], device),
        ref_index=np.array([refs.index(r) for r in pairs["ref_image"]]),
        gen_index=np.array([gens.index(g) for g in pairs["gen_image"]]),
        prompt_index=pairs["prompt_index"].to_numpy(), p=pairs["p"].to_numpy(), labels=y,
        **text_conditioning(ctx, pipe, device), **time_ids(ctx, pipe, ref_photos, gen_photos),
        **baseline_data(ctx, pipe, device),
    )


def baseline_data(ctx, pipe, device) -> dict:
    """PairData's fields of the baselines (rpo.methods): prior preservation's class images and class prompt, and
    the instance prompt's token ids for the methods that run the text encoder at every step; RPO: none."""
    from rpo.config import TOKEN_METHODS, uses_class_images
    from rpo.prompts import class_prompt
    from rpo.train import encode_images, encode_prompts

    extras, train = {}, ctx.cfg.train
    if uses_class_images(train):
        classes = A.read_table(ctx.paths.class_prior_manifest, A.PRIOR_MANIFEST).to_pandas()
        if classes.empty:
            raise A.ArtifactError(f"{ctx.paths.class_prior_manifest}: no class images (run class_prior with "
                                  f"train.method {train.method})")
        extras["class_latents"] = encode_images(
            pipe.vae, [center_square(load_rgb(ctx.root / p), ctx.resolution) for p in classes["path"]], device)
        extras["class_embeds"] = encode_prompts(pipe, [class_prompt(ctx.subject.class_noun)], device)
    if train.method in TOKEN_METHODS:
        tok = pipe.tokenizer
        extras["inst_ids"] = tok(instance_prompt(ctx.token, ctx.subject.class_noun), padding="max_length",
                                 max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    return extras


def add_subject_token(ctx, pipe) -> None:
    """Textual Inversion, Custom Diffusion: V becomes a new token, its row initialised as the scripts do."""
    from rpo.embeddings import add_token

    init = ctx.cfg.train.initializer_token
    init = ctx.subject.class_noun if init == "class_noun" else init
    token_id = add_token(pipe.tokenizer, pipe.text_encoder, ctx.token, init)
    log.info("finetune: %r is the new token %d, initialised from %r", ctx.token, token_id, init)


def text_conditioning(ctx, pipe, device) -> dict:
    """PairData's text fields: c_inst and the training prompts encoded once (SDXL: pooled too), and their texts."""
    from rpo.train import encode_conditioning

    inst, prompts = instance_prompt(ctx.token, ctx.subject.class_noun), subject_training_prompts(ctx)
    c_inst, c_prompts = encode_conditioning(pipe, [inst], device), encode_conditioning(pipe, prompts, device)
    return {"inst_embeds": c_inst["embeds"], "prompt_embeds": c_prompts["embeds"], "inst_pooled": c_inst.get("pooled"),
            "prompt_pooled": c_prompts.get("pooled"), "inst_text": inst, "prompt_texts": tuple(prompts)}


def time_ids(ctx, pipe, ref_photos, gen_photos) -> dict:
    """SDXL's size conditioning of every training image, as diffusers' SDXL DreamBooth script computes it:
    the photo's own size, where the centre crop of its resized copy starts, the training resolution
    (`train.time_ids: resolution`: all (res, res), crop (0, 0), as the official train_sdxl.py); SD: none."""
    import torch

    from rpo import family

    if not family.of(pipe).pooled:
        return {}
    res = ctx.resolution

    def ids(im):
        if ctx.cfg.train.time_ids == "resolution":
            return family.time_ids((res, res), (0, 0), (res, res))
        return family.time_ids((im.height, im.width), center_crop_top_left(im.size, res), (res, res))

    return {"ref_time_ids": torch.tensor([ids(im) for im in ref_photos], dtype=torch.float32),
            "gen_time_ids": torch.tensor([ids(im) for im in gen_photos], dtype=torch.float32)}


def _remove_outputs(ctx) -> None:
    """A half-finished earlier run must not mix with this one."""
    for stale in (ctx.paths.checkpoints, ctx.paths.validation_images):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in (ctx.paths.validation, ctx.paths.train_log):
        stale.unlink(missing_ok=True)


class Validator:
    """At each validation step: images of the training prompts, their raw scores, a checkpoint."""

    def __init__(self, ctx, pipe, reward, device):
        from rpo.config import TOKEN_METHODS
        from rpo.generate import PromptCache, seeded_jobs

        self.ctx, self.pipe, self.reward, self.device = ctx, pipe, reward, device
        v, train = ctx.cfg.validate, ctx.cfg.train
        self.jobs = seeded_jobs(subject_training_prompts(ctx), v.images_per_prompt, ctx.cfg.seed + 1)
        self.prompt_cache = PromptCache(pipe, device)  # validation prompts are fixed: encode them once per run
        self.learns_token = train.method in TOKEN_METHODS
        self.text_learns = self.learns_token or train.text_encoder_lora  # ... unless the text encoder trains
        self.records: list[dict] = []

    def __call__(self, step: int, unet) -> None:
        from rpo.family import of
        from rpo.generate import PromptCache, generate_jobs

        ctx, v = self.ctx, self.ctx.cfg.validate
        if self.text_learns:  # the prompts' embeddings change every step
            self.prompt_cache = PromptCache(self.pipe, self.device)
        images = generate_jobs(self.pipe, self.jobs, steps=v.num_inference_steps, guidance=v.guidance_scale,
                               resolution=ctx.resolution, batch_size=ctx.cfg.prior.batch_size,
                               desc=f"validate@{step}", cache=self.prompt_cache)
        ai, at = self.reward.score(images, [j[2] for j in self.jobs])
        folder = ctx.paths.validation_images / f"step_{step:05d}"
        with A.atomic_dir(folder) as tmp:
            for (pi, ii, _, _), im in zip(self.jobs, images):
                im.save(tmp / f"p{pi:02d}_{ii:03d}.png")
        for (pi, ii, prompt, seed), a, b in zip(self.jobs, ai, at):
            self.records.append({"step": step, "prompt_index": pi, "prompt": prompt, "image_index": ii, "seed": seed,
                                 "path": ctx.rel(folder / f"p{pi:02d}_{ii:03d}.png"),
                                 "align_i": float(a), "align_t": float(b)})
        log.info("validation step %d%s: ALIGN-I %.4f, ALIGN-T %.4f", step, " (the base model)" if step == 0 else "",
                 float(ai.mean()), float(at.mean()))
        if step == 0:  # the base model: shown on the curve, never selected, so no checkpoint
            return
        checkpoints.save(unet, ctx.paths.checkpoints / f"step_{step:05d}", method=ctx.cfg.train.method,
                         text=(self.pipe.tokenizer, self.pipe.text_encoder) if self.learns_token else None,
                         text_encoders=of(self.pipe).encoders(self.pipe))
        if v.keep != "all":
            checkpoints.prune(ctx.paths.checkpoints, checkpoints.kept_steps(pd.DataFrame(self.records), v))


class Resume:
    """The state of a run at its last validation, kept outside every DVC output (.rpo/resume/) so that a killed
    finetune goes on from there when it is run again: the fp32 weights, optimizer, scaler and noise generator,
    the log and validation records so far, and hard links to the checkpoints and validation images written so far
    (DVC removes a stage's outputs before it runs it again). Keyed by everything the run depends on, so a change
    of params, inputs or code starts from step 0; removed when the run completes."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.folder = ctx.root / RESUME / self.key()

    def key(self) -> str:
        from rpo import params as P
        from rpo.config import to_dict
        from rpo.deps import stage_code
        from rpo.stages import spec

        c, ctx = to_dict(self.ctx.cfg), self.ctx
        inputs = [ctx.paths.labels, ctx.paths.prior_manifest, *ctx.subject.images, *sorted(ctx.paths.prior_dir.glob("*.png")),
                  *sorted(ctx.paths.class_prior_dir.glob("*"))]
        parts = {"params": {k: P.get(c, k) for k in spec("finetune").params_for(self.ctx.cfg)}, "device": c["device"],
                 "inputs": [A.sha256(p) for p in inputs],
                 "code": [A.sha256(ctx.root / f) for f in stage_code("finetune", ctx.root) if (ctx.root / f).exists()]}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def load(self):
        """(training state, log rows, validation records) of the last validation, or None: outputs restored."""
        import torch

        from rpo.train import TrainingState

        if not (self.folder / "state.pt").exists():
            return None
        saved = torch.load(self.folder / "state.pt", weights_only=True)
        _remove_outputs(self.ctx)
        for name, target in (("checkpoints", self.ctx.paths.checkpoints), ("validation", self.ctx.paths.validation_images)):
            if (self.folder / name).is_dir():
                shutil.copytree(self.folder / name, target, copy_function=os.link)
        log.info("finetune: resuming %s after step %d from %s", self.ctx.subject.name, saved["step"], self.folder)
        state = TrainingState(saved["step"], saved["weights"], saved["optimizer"], saved["scaler"], saved["generator"])
        return state, saved["log_rows"], saved["records"]

    def save(self, state, log_rows: list[dict], records: list[dict]) -> None:
        import torch

        with A.atomic_dir(self.folder) as tmp:
            torch.save({"step": state.step, "weights": state.weights, "optimizer": state.optimizer,
                        "scaler": state.scaler, "generator": state.generator, "log_rows": log_rows,
                        "records": records}, tmp / "state.pt")
            for name, source in (("checkpoints", self.ctx.paths.checkpoints), ("validation", self.ctx.paths.validation_images)):
                if source.is_dir():
                    shutil.copytree(source, tmp / name, copy_function=os.link)

    def done(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def run(ctx) -> Path:
    import torch

    from rpo.config import TOKEN_METHODS, uses_class_images
    from rpo.device import pick_device, pick_dtype
    from rpo.generate import stage_pipeline
    from rpo.scoring import RewardModel
    from rpo.train import train

    for needed in (ctx.paths.labels, ctx.paths.prior_manifest, *([ctx.paths.class_prior_manifest]
                                                                 if uses_class_images(ctx.cfg.train) else [])):
        if not needed.exists():
            raise A.ArtifactError(f"{needed}: missing (run the stage that writes it first)")
    device = pick_device(ctx.cfg.device)
    pipe = stage_pipeline(ctx.cfg.model, device, unet_dtype=torch.float32)  # fp32 master weights, never rounded first
    if ctx.cfg.train.method in TOKEN_METHODS:
        add_subject_token(ctx, pipe)
    data = pair_data(ctx, pipe, device)
    reward = RewardModel.of(ctx.cfg.reward, ctx.subject.load_images(), ctx.token, device)
    validate = Validator(ctx, pipe, reward, device)
    resume = Resume(ctx) if ctx.cfg.train.resume else None
    saved = resume.load() if resume else None
    log_rows: list[dict] = []
    if saved:
        state, log_rows, validate.records = saved[0], list(saved[1]), list(saved[2])
    else:
        state = None
        _remove_outputs(ctx)
    checkpoint = (lambda s: resume.save(s, log_rows, validate.records)) if resume else None
    train(pipe, data, ctx.cfg.train, validate_every=ctx.cfg.validate.every, validate_at_start=ctx.cfg.validate.at_start,
          seed=ctx.cfg.seed, device=device,
          ref_dtype=pick_dtype(ctx.cfg.model.dtype, device, cpu_half=True), on_validate=validate,
          on_log=log_rows.append, resume_from=state, on_checkpoint=checkpoint)
    with A.atomic_file(ctx.paths.train_log) as tmp:
        pd.DataFrame(log_rows).to_csv(tmp, index=False)
    # written last: select reads it, so its presence means every checkpoint it names is complete
    out = A.write_table(validate.records, A.VALIDATION, ctx.paths.validation)
    if resume:
        resume.done()
    return out
