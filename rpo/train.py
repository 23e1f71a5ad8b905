"""RPO fine-tuning: the data a run needs, one loss step, and the loop (short enough to read at once)."""

from __future__ import annotations

import copy
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from rpo import family, generate, xla
from rpo.config import Train
from rpo.device import pick_dtype
from rpo.loss import per_sample_error, rpo_loss

log = logging.getLogger(__name__)


@dataclass
class PairData:
    """Everything the loop samples from, encoded once before the first step.

    Pair i is (reference ref_index[i], prior image gen_index[i], training prompt prompt_index[i]);
    labels[d, i] is the d-th seeded Bradley-Terry draw for pair i, p[i] its probability.
    SDXL adds the pooled text embeddings of the prompts and each image's time ids (size and crop);
    the prompts' texts let text-encoder adapters (train.text_encoder_lora) encode them at every step.
    """

    ref_latents: torch.Tensor  # (n_ref, C, h, w)
    gen_latents: torch.Tensor  # (n_gen, C, h, w)
    inst_embeds: torch.Tensor  # (1, L, D): c_inst
    prompt_embeds: torch.Tensor  # (n_prompts, L, D)
    ref_index: np.ndarray
    gen_index: np.ndarray
    prompt_index: np.ndarray
    p: np.ndarray
    labels: np.ndarray  # (draws, n_pairs)
    # the baselines' extras (rpo.methods): prior preservation's class images, and the instance prompt's token ids
    # for the methods that run the text encoder at every step
    class_latents: torch.Tensor | None = None  # (n_class, C, h, w)
    class_embeds: torch.Tensor | None = None  # (1, L, D): the class prompt
    inst_ids: torch.Tensor | None = None  # (1, L)
    inst_pooled: torch.Tensor | None = None  # (1, P): SDXL's pooled c_inst
    prompt_pooled: torch.Tensor | None = None  # (n_prompts, P)
    ref_time_ids: torch.Tensor | None = None  # (n_ref, 6): SDXL's original size, crop, target size per image
    gen_time_ids: torch.Tensor | None = None  # (n_gen, 6)
    inst_text: str = ""
    prompt_texts: tuple[str, ...] = ()

    @property
    def n_pairs(self) -> int:
        return len(self.ref_index)

    def batch_indices(self, step: int, batch_size: int, seed: int) -> tuple[np.ndarray, int]:
        """Pairs of a 0-based step: a seeded permutation per epoch, label draw = epoch mod draws."""
        steps_per_epoch = math.ceil(self.n_pairs / batch_size)
        epoch, k = divmod(step, steps_per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(self.n_pairs)
        return order[k * batch_size : (k + 1) * batch_size], epoch % self.labels.shape[0]

    def class_batch(self, step: int, batch_size: int, seed: int, device) -> dict:
        """Class images of a 0-based step: a seeded permutation of them per pass, as many as the step's pairs."""
        n = len(self.class_latents)
        start = step * batch_size
        idx = [np.random.default_rng([seed, e, 1]).permutation(n)[k] for e, k in (divmod(i, n) for i in
               range(start, start + batch_size))]
        return {"z_class": self.class_latents[idx].to(device),
                "c_class": self.class_embeds.expand(batch_size, -1, -1).to(device)}

    def batch(self, idx: np.ndarray, draw: int, device) -> dict:
        out = {
            "z_ref": self.ref_latents[self.ref_index[idx]].to(device),
            "z_gen": self.gen_latents[self.gen_index[idx]].to(device),
            "c_inst": self.inst_embeds.expand(len(idx), -1, -1).to(device),
            "c_pair": self.prompt_embeds[self.prompt_index[idx]].to(device),
            "y": torch.as_tensor(self.labels[draw, idx], dtype=torch.float32, device=device),
            "p": torch.as_tensor(self.p[idx], dtype=torch.float32),
        }
        if self.prompt_pooled is not None:  # SDXL: x_ref's time ids go with c_inst (or c), x_gen's with c
            out.update(pooled_inst=self.inst_pooled.expand(len(idx), -1).to(device),
                       pooled_pair=self.prompt_pooled[self.prompt_index[idx]].to(device),
                       time_ref=self.ref_time_ids[self.ref_index[idx]].to(device),
                       time_gen=self.gen_time_ids[self.gen_index[idx]].to(device))
        if self.prompt_texts:
            out.update(text_inst=[self.inst_text] * len(idx),
                       text_pair=[self.prompt_texts[i] for i in self.prompt_index[idx]])
        return out


@torch.no_grad()
def encode_images(vae, images, device, batch_size: int = 16) -> torch.Tensor:
    """VAE latents (mean of the posterior, scaled): deterministic, unlike a sample.

    A VAE that overflows in fp16 (SDXL's own, `force_upcast` in its config) encodes in fp32, as the pipeline decodes.
    """
    from torchvision.transforms.functional import pil_to_tensor

    dtype = vae.dtype
    upcast = dtype == torch.float16 and vae.config.get("force_upcast", False)
    if upcast:
        vae.to(torch.float32)
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([pil_to_tensor(im) for im in images[i : i + batch_size]]).float() / 127.5 - 1.0
        out.append(vae.encode(x.to(device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor)
    if upcast:
        vae.to(dtype)
    return torch.cat(out).float().cpu()


def encode_prompts(pipe, prompts: list[str], device) -> torch.Tensor:
    """Text embeddings of the training prompts, kept on the CPU in fp32 and indexed per step."""
    return encode_conditioning(pipe, prompts, device)["embeds"]


def encode_conditioning(pipe, prompts: list[str], device) -> dict[str, torch.Tensor]:
    """Every part of the prompts' conditioning (SDXL: "pooled" too), on the CPU in fp32."""
    return {k: v.float().cpu() for k, v in generate.encode_conditioning(pipe, prompts, device).items()}


def diffusion_target(scheduler, z, noise, t):
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(z, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")


def rpo_step_losses(unet, ref_unet, scheduler, batch: dict, *, beta: float, share_noise: bool, ref_prompt: str,
                    generator: torch.Generator, autocast=nullcontext) -> dict:
    """The loss terms of one batch of pairs (DESIGN.md section 1).

    One forward of the trainable U-Net over [x_ref; x_gen]. Official behaviour (defaults):
    independent noise and t for the two halves, x_ref conditioned on c_inst inside Delta, so
    that forward also gives L_sim. ref_prompt="pair" conditions x_ref on c instead and costs
    one more forward for L_sim; share_noise uses one (noise, t) per pair, as Diffusion-DPO.
    SDXL (batch keys pooled_*, time_*): each half also gets its prompt's pooled embedding and its
    image's time ids; with text-encoder adapters, eps_ref takes the base encoders' "ref_" conditioning.
    """
    z = torch.cat([batch["z_ref"], batch["z_gen"]])
    n, device = batch["z_ref"].shape[0], z.device
    noise = torch.randn(z.shape, generator=generator).to(device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (2 * n,), generator=generator).to(device)
    if share_noise:
        noise, t = torch.cat([noise[:n], noise[:n]]), torch.cat([t[:n], t[:n]])
    z_t = scheduler.add_noise(z, noise, t)
    target = diffusion_target(scheduler, z, noise, t)
    cond, added = pair_conditioning(batch, ref_prompt)
    # eps_ref is the base model: with text-encoder adapters, the base encoders' conditioning ("ref_" keys)
    ref_cond, ref_added = pair_conditioning(batch, ref_prompt, "ref_" if "ref_c_pair" in batch else "")

    with autocast():
        l_theta = per_sample_error(unet(z_t, t, cond, added_cond_kwargs=added).sample, target)
        if ref_prompt == "instance":
            l_theta_inst = l_theta[:n]
        else:
            inst_added = family.added_conditions(batch["pooled_inst"], batch["time_ref"]) if added else None
            l_theta_inst = per_sample_error(unet(z_t[:n], t[:n], batch["c_inst"], added_cond_kwargs=inst_added).sample,
                                            target[:n])
        if beta > 0:
            with torch.no_grad():
                dt = ref_unet.dtype
                eps_ref = ref_unet(z_t.to(dt), t, ref_cond.to(dt), added_cond_kwargs=_cast(ref_added, dt)).sample
                l_ref = per_sample_error(eps_ref, target)
        else:
            l_ref = l_theta.detach()  # Delta is 0 whatever l_ref is: skip the frozen U-Net
    out = rpo_loss(l_theta_ref_inst=l_theta_inst, l_ref_ref=l_ref[:n], l_theta_ref=l_theta[:n], l_ref_gen=l_ref[n:],
                   l_theta_gen=l_theta[n:], y=batch["y"], beta=beta)
    out["p_dev"] = (batch["p"] - 0.5).abs().mean()
    out["label_mean"] = batch["y"].mean()
    return out


def pair_conditioning(batch: dict, ref_prompt: str, prefix: str = "") -> tuple[torch.Tensor, dict | None]:
    """The U-Net's conditioning of [x_ref; x_gen]: x_gen on its prompt c, x_ref on c_inst (or on c with
    ref_prompt="pair"); for SDXL also the matching pooled embeddings and each image's own time ids.
    `prefix` "ref_" takes the text conditioning of the base encoders (when text-encoder adapters train)."""
    ref_key = "inst" if ref_prompt == "instance" else "pair"
    cond = torch.cat([batch[f"{prefix}c_{ref_key}"], batch[f"{prefix}c_pair"]])
    if "time_ref" not in batch:
        return cond, None
    pooled = torch.cat([batch[f"{prefix}pooled_{ref_key}"], batch[f"{prefix}pooled_pair"]])
    return cond, family.added_conditions(pooled, torch.cat([batch["time_ref"], batch["time_gen"]]))


def _cast(added: dict | None, dtype: torch.dtype) -> dict | None:
    return None if added is None else {k: v.to(dtype) for k, v in added.items()}


def validation_steps(max_steps: int, every: int) -> list[int]:
    """Every `validate.every` steps, and always the last step (so early stopping can be turned off)."""
    steps = list(range(every, max_steps + 1, every))
    return steps if steps and steps[-1] == max_steps else steps + [max_steps]


def frozen_reference(unet, dtype: torch.dtype):
    """eps_ref: a frozen copy of the base U-Net, run without gradients (half precision on accelerators)."""
    ref = copy.deepcopy(unet).to(dtype).eval()
    ref.requires_grad_(False)
    return ref


# the attention projections, as diffusers' DreamBooth LoRA script adapts them
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_lora(unet, rank: int):
    """Freeze the U-Net and add rank-`rank` LoRA adapters (alpha = rank, B = 0: training starts at the base model)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    for p in unet.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # fp32 master weights for the adapters only
    return unet


class AdaptersOff:
    """eps_ref under LoRA: the trainable U-Net with its adapters switched off is exactly the frozen base model."""

    def __init__(self, unet):
        self.unet = unet

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def __call__(self, *args, **kwargs):
        self.unet.disable_adapters()
        try:
            return self.unet(*args, **kwargs)
        finally:
            self.unet.enable_adapters()


# the attention projections of CLIP's text encoders, as the official train_sdxl.py and diffusers' scripts adapt them
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


class TextAdapters:
    """train.text_encoder_lora: rank-`rank` LoRA on every text encoder of the pipeline (both of SDXL's).

    eps_theta then sees the prompts through the adapters, encoded at every step with gradients; eps_ref
    sees them through the base encoders, whose conditioning PairData computed before the adapters existed,
    so the reference stays the base model with every adapter off, exactly.
    """

    def __init__(self, pipe, rank: int, device, dtype: torch.dtype):
        from peft import LoraConfig, inject_adapter_in_model

        self.pipe, self.family = pipe, family.of(pipe)
        for encoder in self.family.encoders(pipe).values():
            encoder.to(device, dtype).requires_grad_(False)
            # peft itself, not transformers' add_adapter: transformers 5 asks for a newer peft than is released
            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                               target_modules=TEXT_LORA_TARGETS), encoder)
            for p in encoder.parameters():
                if p.requires_grad:
                    p.data = p.data.float()  # fp32 master weights for the adapters only
        self.device = device

    @property
    def encoders(self) -> dict:
        return self.family.encoders(self.pipe)

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.named_parameters().values())

    def named_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {f"{name}.{n}": p for name, e in self.encoders.items() for n, p in e.named_parameters() if p.requires_grad}

    def condition(self, batch: dict) -> dict:
        """The batch with c_inst, c_pair (and pooled) through the adapters, the base's as the "ref_" keys."""
        out = dict(batch)
        for key in ("inst", "pair"):
            encoded = self.family.encode(self.pipe, batch[f"text_{key}"], self.device)
            out[f"ref_c_{key}"], out[f"c_{key}"] = batch[f"c_{key}"], encoded["embeds"].float()
            if "pooled" in encoded:
                out[f"ref_pooled_{key}"], out[f"pooled_{key}"] = batch[f"pooled_{key}"], encoded["pooled"].float()
        return out


def trainable_unets(unet, cfg: Train, device, ref_dtype, reference: bool | None = None):
    """(eps_theta, eps_ref or None when beta = 0, or when `reference` is False).

    Full fine-tuning: fp32 master weights (autocast gives mixed precision) and a frozen copy in
    `ref_dtype`. LoRA: the base weights stay frozen in the autocast precision, no second copy.
    """
    reference = cfg.beta > 0 if reference is None else reference
    if cfg.lora_rank > 0:
        unet = add_lora(unet.to(device, pick_dtype(cfg.mixed_precision, device)), cfg.lora_rank)
        ref = AdaptersOff(unet) if reference else None
    else:
        unet = unet.to(device, torch.float32).requires_grad_(True)
        ref = frozen_reference(unet, ref_dtype) if reference else None
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.compile:
        unet.compile()
        if isinstance(ref, torch.nn.Module):  # under LoRA eps_ref is the same, already compiled U-Net
            ref.compile()
    return unet, ref


@dataclass
class TrainingState:
    """Everything a stopped run needs to go on exactly as if it had not stopped (rpo.stages.finetune.Resume)."""

    step: int
    weights: dict  # the trainable weights in fp32: the whole U-Net, the adapters under LoRA, a baseline's (rpo.methods)
    optimizer: dict
    scaler: dict
    generator: torch.Tensor  # the noise and timestep generator's state


# the progress bar's loss terms, those a method logs (RPO: L_pref and Delta; prior preservation: L_prior)
POSTFIX = (("loss", ".4f"), ("l_pref", ".4f"), ("l_prior", ".4f"), ("delta_abs", ".2e"))


def train(pipe, data: PairData, cfg: Train, *, validate_every: int, seed: int, device, ref_dtype, on_validate,
          on_log, resume_from: TrainingState | None = None, on_checkpoint=None, validate_at_start: bool = False) -> None:
    """Fine-tune pipe in place with `cfg.method`; on_validate(step, unet) at each validation step (and at step 0,
    before training, with `validate_at_start`), on_log(row) every step.

    `ref_dtype` (model.dtype) is the precision of everything that runs without gradients: the frozen
    reference U-Net and the validation images; `cfg.mixed_precision` that of the training step.
    `resume_from` goes on from a saved state; `on_checkpoint(state)` receives one after each validation.
    """
    from rpo.methods import setup

    for frozen in (pipe.vae, *family.of(pipe).encoders(pipe).values()):
        frozen.requires_grad_(False)
    method = setup(pipe, cfg, device, ref_dtype)  # what trains (eps_ref from the base, before any resume)
    unet, named = method.unet, method.trainable()
    params = list(named.values())
    scheduler = training_scheduler(pipe)
    opt = torch.optim.AdamW(params, lr=method.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            weight_decay=cfg.weight_decay)
    train_dtype = pick_dtype(cfg.mixed_precision, device)
    autocast = _autocast(train_dtype, device)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (the scaler is then a no-op)
    scaler = torch.amp.GradScaler(device.type, enabled=train_dtype == torch.float16)
    generator = torch.Generator("cpu").manual_seed(seed)
    start = 0
    if resume_from is not None:
        start = _restore(resume_from, named, opt, scaler, generator)
    checks = set(validation_steps(cfg.max_steps, validate_every))
    log.info("training %d steps on %d pairs (batch %d, %s), validating at steps %s%s", cfg.max_steps, data.n_pairs,
             cfg.batch_size, method.describe(), sorted(checks), f"; resuming after step {start}" if start else "")
    bar = tqdm(range(start + 1, cfg.max_steps + 1), desc="finetune", unit="step", initial=start, total=cfg.max_steps)

    def log_row(row: dict) -> None:
        on_log(row)
        bar.set_postfix({k: format(row[k], f) for k, f in POSTFIX if k in row})  # each method logs its own terms

    steps = xla.StepLog(device, log_row)  # every step's row; read from the device every few steps on XLA
    if validate_at_start and start == 0:
        _validate(unet, 0, ref_dtype, device, on_validate)
    for step in bar:
        unet.train()
        out = method.losses(data, step, seed, device, scheduler, generator, autocast)
        opt.zero_grad(set_to_none=True)
        scaler.scale(out["loss"]).backward()
        method.mask_gradients()
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        scaler.step(opt)
        scaler.update()
        method.after_step()
        xla.mark_step(device)  # one graph per step on XLA: forward, backward and update
        steps.add(step, {**out, "grad_norm": grad_norm})
        if step in checks:
            steps.flush()
            _validate(unet, step, ref_dtype, device, on_validate)
            if on_checkpoint is not None and step < cfg.max_steps:
                weights = xla.to_host({n: p.detach() for n, p in named.items()}, device)
                on_checkpoint(TrainingState(step, {n: w.float().clone() for n, w in weights.items()},
                                            opt.state_dict(), scaler.state_dict(), generator.get_state()))
    steps.flush()


def _validate(unet, step: int, ref_dtype, device, on_validate) -> None:
    unet.eval()
    with _autocast(ref_dtype, device)():
        on_validate(step, unet)


def _restore(state: TrainingState, named: dict, opt, scaler, generator) -> int:
    missing = sorted(set(named) ^ set(state.weights))
    if missing:
        raise ValueError(f"the saved training state does not fit this model: {missing[:3]}")
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(state.weights[name].to(p.device, p.dtype))
    opt.load_state_dict(state.optimizer)
    scaler.load_state_dict(state.scaler)
    generator.set_state(state.generator)
    return state.step


def training_scheduler(pipe):
    """DDPM with the base model's noise schedule and prediction type: the forward process of training."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def _autocast(dtype: torch.dtype, device):
    if dtype == torch.float32:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)
