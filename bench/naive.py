"""The naive procedure: what the official code (github.com/andrew-miao/RPO, rpo_sd.py) does, on our models.

It lives here, in the benchmark, and never in the product. Each stage reads and writes the
same artifacts as ours (so the next naive stage has its inputs), but does the work the way the
official code does:
- everything in fp32, the diffusers default attention, no TF32;
- one image per pipeline call, the prompt and the empty negative prompt encoded at every call;
- the reward model reloaded at every validation; each reward call embeds every reference image
  again together with the images it scores (`RewardModel.i2i_similarity_fn`), and the prompts again;
- the frozen reference U-Net loaded a second time from disk, in fp32;
- every training step re-reads its two images from disk, VAE-encodes them (a posterior sample)
  and runs the text encoder on its two prompts (the DataLoader and `encode_prompt` in the loop);
- at a validation that improves the reward, the whole fp32 pipeline is saved;
- evaluation loads DINO and CLIP again for every prompt (`DINO_score`, `CLIP_I_score`, `CLIP_T_score`).
Counts, seeds, models and the loss (`rpo.train.rpo_step_losses`) are the same as ours.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision import transforms

from rpo import artifacts as A
from rpo.device import pick_device
from rpo.dreambench import evaluation_prompts
from rpo.encoders import HFImageEncoder, dual_encoder
from rpo.generate import seeded_jobs
from rpo.images import load_rgb
from rpo.prompts import instance_prompt, strip_token, subject_training_prompts
from rpo.registry import model_path
from rpo.reward import harmonic
from rpo.stages import labels
from rpo.train import rpo_step_losses, training_scheduler, validation_steps

ALL_AT_ONCE = 10**6  # the official code hands every image to the processor in one call


def pipeline(ctx, path: str | None = None):
    from diffusers import StableDiffusionPipeline

    torch.backends.cuda.matmul.allow_tf32 = False  # the official default (--allow_tf32 is off)
    pipe = StableDiffusionPipeline.from_pretrained(
        path or model_path(ctx.cfg.model.base), use_safetensors=True, safety_checker=None,
        requires_safety_checker=False, feature_extractor=None, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(pick_device(ctx.cfg.device))


def one_by_one(pipe, jobs, cfg, resolution: int) -> list:
    """One pipeline call per image, as the official prior, validation and evaluation loops."""
    return [pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=cfg.num_inference_steps,
                 guidance_scale=cfg.guidance_scale, height=resolution, width=resolution).images[0]
            for _, _, prompt, seed in jobs]


class NaiveReward:
    """The official RewardModel (rtype "mix"): nothing is kept between calls but the model itself."""

    def __init__(self, ctx):
        cfg = ctx.cfg.reward
        self.encoder = dual_encoder(cfg.backend, cfg.model, pick_device(ctx.cfg.device))
        self.encoder.batch_size = ALL_AT_ONCE
        self.refs, self.token = ctx.subject.load_images(), ctx.token

    def scores(self, images, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        ai = torch.stack([_first_to_rest(self.encoder.embed_images([r] + images)) for r in self.refs]).mean(0)
        text = self.encoder.embed_texts([strip_token(prompt, self.token)] * len(images))
        at = (self.encoder.embed_images(images) * text).sum(-1)
        return (ai + 1) / 2, (at + 1) / 2


def _model_dir(ctx):
    """Where finetune writes for this subject: the official code's output folder."""
    return ctx.paths.checkpoints.parent


def _first_to_rest(emb: torch.Tensor) -> torch.Tensor:
    return emb[1:] @ emb[0]


def _by_prompt(jobs, images):
    prompts = list(dict.fromkeys(j[2] for j in jobs))
    return {p: [im for j, im in zip(jobs, images) if j[2] == p] for p in prompts}


# --- stages ---------------------------------------------------------------------------------


def prior(ctx) -> None:
    cfg = ctx.cfg.prior
    jobs = seeded_jobs(subject_training_prompts(ctx), cfg.images_per_prompt, ctx.cfg.seed)
    images = one_by_one(pipeline(ctx), jobs, cfg, ctx.resolution)
    out = ctx.paths.prior_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for (pi, ii, prompt, seed), im in zip(jobs, images):
        im.save(out / f"p{pi:02d}_{ii:03d}.png")
        rows.append({"prompt_index": pi, "prompt": prompt, "image_index": ii, "seed": seed,
                     "path": ctx.rel(out / f"p{pi:02d}_{ii:03d}.png"), "sha256": ""})
    A.write_table(rows, A.PRIOR_MANIFEST, ctx.paths.prior_manifest)


def score(ctx) -> None:
    """PreferenceDataset.__init__: one reward call per training prompt, over the references and its images.

    (The official call holds one reference; ours needs every reference's score, so all of them go in.)
    """
    manifest = A.read_table(ctx.paths.prior_manifest, A.PRIOR_MANIFEST).to_pandas()
    reward, lam = NaiveReward(ctx), ctx.cfg.reward.lambda_train
    refs = [ctx.rel(p) for p in ctx.subject.images]
    rows = []
    for pi, prompt in enumerate(subject_training_prompts(ctx)):
        mine = manifest[manifest["prompt_index"] == pi]
        ai, at = reward.scores(ctx.subject.load_images() + [load_rgb(ctx.root / p) for p in mine["path"]], prompt)
        kinds = [("ref", r) for r in refs] + [("gen", p) for p in mine["path"]]
        rows += [{"kind": k, "image": img, "prompt_index": pi, "prompt": prompt, "align_i": float(a),
                  "align_t": float(t), "reward": float(harmonic(float(a), float(t), lam))}
                 for (k, img), a, t in zip(kinds, ai, at)]
    A.write_table(rows, A.REWARDS, ctx.paths.rewards)


def finetune(ctx) -> None:
    from diffusers import UNet2DConditionModel

    cfg, vcfg, device = ctx.cfg.train, ctx.cfg.validate, pick_device(ctx.cfg.device)
    pipe = pipeline(ctx)
    unet = pipe.unet.train().requires_grad_(True)
    for frozen in (pipe.vae, pipe.text_encoder):
        frozen.requires_grad_(False)
    ref_unet = UNet2DConditionModel.from_pretrained(model_path(ctx.cfg.model.base), subfolder="unet",
                                                    use_safetensors=True).to(device).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            weight_decay=cfg.weight_decay)
    table = A.read_table(ctx.paths.labels, A.LABELS).to_pandas()
    pairs = table[table["draw"] == 0].sort_values("pair_id").reset_index(drop=True)
    scheduler, generator = training_scheduler(pipe), torch.Generator("cpu").manual_seed(ctx.cfg.seed)
    order = np.random.default_rng(ctx.cfg.seed).permutation(len(pairs))
    to_tensor = transforms.Compose([transforms.Resize(ctx.resolution), transforms.CenterCrop(ctx.resolution),
                                    transforms.ToTensor(), transforms.Normalize([0.5], [0.5])])
    c_inst = instance_prompt(ctx.token, ctx.subject.class_noun)
    checks, best = set(validation_steps(cfg.max_steps, vcfg.every)), None
    for step in range(1, cfg.max_steps + 1):
        pair = pairs.iloc[order[(step - 1) % len(pairs)]]
        pixels = torch.stack([to_tensor(load_rgb(ctx.root / pair["ref_image"])),
                              to_tensor(load_rgb(ctx.root / pair["gen_image"]))]).to(device)
        with torch.no_grad():
            z = pipe.vae.encode(pixels).latent_dist.sample() * pipe.vae.config.scaling_factor
            ids = pipe.tokenizer([c_inst, pair["prompt"]], padding="max_length", truncation=True,
                                 max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
            emb = pipe.text_encoder(ids.to(device))[0]
        batch = {"z_ref": z[:1], "z_gen": z[1:], "c_inst": emb[:1], "c_pair": emb[1:],
                 "y": torch.tensor([float(pair["y"])], device=device), "p": torch.tensor([pair["p"]])}
        out = rpo_step_losses(unet, ref_unet, scheduler, batch, beta=cfg.beta, share_noise=cfg.share_noise,
                              ref_prompt=cfg.ref_prompt, generator=generator)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad()
        if step in checks:
            reward = _validate(ctx, pipe, vcfg, step)
            if best is None or reward > best:  # the official code saves the whole fp32 pipeline at each improvement
                best = reward
                pipe.save_pretrained(_model_dir(ctx) / "best", safe_serialization=True)
            unet.train()


def _validate(ctx, pipe, vcfg, step: int) -> float:
    pipe.unet.eval()
    jobs = seeded_jobs(subject_training_prompts(ctx), vcfg.images_per_prompt, ctx.cfg.seed + 1)
    reward = NaiveReward(ctx)  # reloaded at every validation
    folder = _model_dir(ctx) / "validation" / f"step_{step:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    rewards = []
    with torch.no_grad():
        for prompt, images in _by_prompt(jobs, one_by_one(pipe, jobs, vcfg, ctx.resolution)).items():
            for i, im in enumerate(images):
                im.save(folder / f"{len(rewards)}_{i}.png")
            ai, at = reward.scores(images, prompt)
            rewards.append(float(harmonic(ai, at, vcfg.lambda_val).mean()))
    return float(np.mean(rewards))


def evaluate(ctx) -> None:
    """rpo_sd.py `evaluation`: per prompt, images one at a time, then DINO, CLIP-I, CLIP-T each loading its model."""
    ev = ctx.cfg.evaluate
    pipe = pipeline(ctx, str(_model_dir(ctx) / "best"))
    prompts = evaluation_prompts(ctx.token, ctx.subject.class_noun, ctx.subject.live)
    jobs = seeded_jobs(prompts, ev.images_per_prompt, ctx.cfg.seed + 2)
    reward, refs, device = NaiveReward(ctx), ctx.subject.load_images(), pick_device(ctx.cfg.device)
    out = ctx.paths.eval_dir
    out.mkdir(parents=True, exist_ok=True)
    scores = []
    with torch.no_grad():
        for k, (prompt, images) in enumerate(_by_prompt(jobs, one_by_one(pipe, jobs, ev, ctx.resolution)).items()):
            text = strip_token(prompt, ctx.token)
            dino = _subject_similarity(HFImageEncoder(ev.dino, device), refs, images)
            clip_i = _subject_similarity(dual_encoder(ev.clip_backend, ev.clip, device), refs, images)
            clip = dual_encoder(ev.clip_backend, ev.clip, device)
            clip_t = (clip.embed_images(images) * clip.embed_texts([text] * len(images))).sum(-1).mean()
            ai, at = reward.scores(images, prompt)
            reward_mean = harmonic(ai, at, ctx.cfg.validate.lambda_val).mean()
            scores.append([float(dino), float(clip_i), float(clip_t), float(reward_mean)])
            for i, im in enumerate(images):
                im.save(out / f"p{k:02d}_{i:03d}.png")
    A.write_json(dict(zip(("dino", "clip_i", "clip_t", "reward"), np.mean(scores, axis=0).tolist())), ctx.paths.metrics)


def _subject_similarity(encoder, refs, images) -> float:
    encoder.batch_size = ALL_AT_ONCE
    return float(torch.stack([_first_to_rest(encoder.embed_images([r] + images)) for r in refs]).mean())


STAGE_FUNCTIONS = {"prior": prior, "score": score, "labels": labels.run, "finetune": finetune, "evaluate": evaluate}
