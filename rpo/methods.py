"""The training methods of `train.method`: RPO and the paper's baselines, behind the one loop of rpo.train.train.

A method says which weights train (they require grad; everything else is frozen), picks a step's batch from the
shared PairData and returns the step's loss terms. Validation, checkpoints, exact resume (the trainable weights
are whatever requires grad) and selection are the same for every method.

- rpo: L = L_sim + L_pref on preference pairs (DESIGN.md section 1); the whole U-Net, or LoRA adapters (with
  train.text_encoder_lora on the text encoders too). The only method for SDXL (rpo.family.check).
- dreambooth: L = L_sim + w * L_prior, prior preservation on the base model's images of the class prompt
  (diffusers' examples/dreambooth/train_dreambooth.py); the whole U-Net, or LoRA adapters.
- textual_inversion: L = L_sim through the text encoder, run at every step; only the new token's row of the
  embedding matrix trains (examples/textual_inversion/textual_inversion.py): the other rows get no gradient and
  are restored after each step, the U-Net is untouched.
- custom_diffusion: L = L_sim + w * L_prior; only the cross-attention key and value projections of the U-Net
  (attn2.to_k, attn2.to_v) and the token's row train (examples/custom_diffusion/train_custom_diffusion.py). The
  script trains copies of them inside its attention processors; training the projections in place is the same
  model and keeps the U-Net's own (fused) attention.

The instance images are the pairs' reference images, drawn by the same seeded sampler as RPO's (so
dreambooth with w = 0 is RPO's pure L_sim ablation); the class images cycle through their own seeded order.
"""

from __future__ import annotations

import torch

from rpo import family
from rpo.config import Train
from rpo.device import pick_dtype
from rpo.embeddings import added_ids
from rpo.loss import per_sample_error, prior_preservation_loss
from rpo.train import PairData, TextAdapters, diffusion_target, rpo_step_losses, trainable_unets


def setup(pipe, cfg: Train, device, ref_dtype) -> "Method":
    """Freeze what `cfg.method` does not train and make the rest trainable (fp32 master weights)."""
    family.require_method_fits(pipe, cfg.method)
    return {"rpo": RPO, "dreambooth": DreamBooth, "textual_inversion": TextualInversion,
            "custom_diffusion": CustomDiffusion}[cfg.method](pipe, cfg, device, ref_dtype)


def instance_step_losses(unet, scheduler, z: torch.Tensor, cond: torch.Tensor, n_inst: int, *, weight: float,
                         generator: torch.Generator, autocast) -> dict:
    """L_sim (+ w * L_prior) of one batch: z / cond hold the instance images first, then any class images.

    One forward over all of them, each with its own noise and timestep, as diffusers' scripts concatenate
    instance and class examples.
    """
    device = z.device
    noise = torch.randn(z.shape, generator=generator).to(device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z.shape[0],), generator=generator).to(device)
    target = diffusion_target(scheduler, z, noise, t)
    with autocast():
        l_theta = per_sample_error(unet(scheduler.add_noise(z, noise, t), t, cond).sample, target)
    prior = l_theta[n_inst:] if z.shape[0] > n_inst else None
    return prior_preservation_loss(l_theta_inst=l_theta[:n_inst], l_theta_prior=prior, weight=weight)


class Method:
    """What every method shares: its U-Nets, learning rate, trainable weights and the loop's hooks."""

    name = ""

    def __init__(self, pipe, cfg: Train, device, ref_dtype):
        self.pipe, self.cfg = pipe, cfg
        self.unet, self.ref_unet = self._unets(pipe, cfg, device, ref_dtype)

    def _unets(self, pipe, cfg, device, ref_dtype):
        """(eps_theta, eps_ref or None) on `device`, their weights frozen or trainable."""
        return trainable_unets(pipe.unet, cfg, device, ref_dtype, reference=False)

    @property
    def learning_rate(self) -> float:
        return self.cfg.learning_rate

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        """Every weight that trains, by a name unique across the U-Net and the text encoder."""
        return {f"unet.{n}": p for n, p in self.unet.named_parameters() if p.requires_grad}

    def describe(self) -> str:
        n = sum(p.numel() for p in self.trainable().values())
        what = f"LoRA rank {self.cfg.lora_rank}" if self.cfg.lora_rank else "full U-Net"
        return f"{self.name}, {what}, {n} trainable weights"

    def losses(self, data: PairData, step: int, seed: int, device, scheduler, generator, autocast) -> dict:
        """The loss terms of 1-based `step` ("loss" is the one to minimise)."""
        raise NotImplementedError

    def mask_gradients(self) -> None:
        """After backward, before clipping and the optimizer step."""

    def after_step(self) -> None:
        """After the optimizer step."""


class RPO(Method):
    """L_sim + L_pref; the whole U-Net (fp32 master weights) or LoRA adapters, and eps_ref when beta > 0;
    train.text_encoder_lora adds adapters to the text encoders, which then encode the step's prompts."""

    name = "RPO"

    def __init__(self, pipe, cfg: Train, device, ref_dtype):
        super().__init__(pipe, cfg, device, ref_dtype)
        self.text = (TextAdapters(pipe, cfg.lora_rank, device, pick_dtype(cfg.mixed_precision, device))
                     if cfg.text_encoder_lora else None)

    def _unets(self, pipe, cfg, device, ref_dtype):
        return trainable_unets(pipe.unet, cfg, device, ref_dtype)

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {**super().trainable(), **(self.text.named_parameters() if self.text else {})}

    def describe(self) -> str:
        return f"beta {self.cfg.beta:g}, " + super().describe() + (", text-encoder LoRA" if self.text else "")

    def losses(self, data: PairData, step: int, seed: int, device, scheduler, generator, autocast) -> dict:
        idx, draw = data.batch_indices(step - 1, self.cfg.batch_size, seed)
        batch = data.batch(idx, draw, device)
        if self.text:
            with autocast():
                batch = self.text.condition(batch)
        return rpo_step_losses(self.unet, self.ref_unet, scheduler, batch, beta=self.cfg.beta,
                               share_noise=self.cfg.share_noise, ref_prompt=self.cfg.ref_prompt, generator=generator,
                               autocast=autocast)


class DreamBooth(Method):
    """L_sim + w * L_prior on the whole U-Net (or LoRA adapters); no eps_ref."""

    name = "DreamBooth"

    def describe(self) -> str:
        return super().describe() + f", prior loss weight {self.cfg.prior_loss_weight:g}"

    def instance(self, data: PairData, step: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, conditioning) of the step's reference images under the instance prompt c_inst."""
        idx, _ = data.batch_indices(step - 1, self.cfg.batch_size, seed)
        return data.ref_latents[data.ref_index[idx]].to(device), data.inst_embeds.expand(len(idx), -1, -1).to(device)

    def losses(self, data: PairData, step: int, seed: int, device, scheduler, generator, autocast) -> dict:
        z, cond = self.instance(data, step, seed, device)
        n, weight = len(z), self.cfg.prior_loss_weight
        if weight > 0:
            if data.class_latents is None or not len(data.class_latents):
                raise ValueError(f"{self.name} with train.prior_loss_weight > 0 needs class images (stage class_prior)")
            cls = data.class_batch(step - 1, n, seed, device)
            z, cond = torch.cat([z, cls["z_class"]]), torch.cat([cond, cls["c_class"].to(cond.dtype)])
        return instance_step_losses(self.unet, scheduler, z, cond, n, weight=weight, generator=generator,
                                    autocast=autocast)


class TokenRows:
    """Training the rows of the tokens added beyond the base vocabulary, and nothing else of the text encoder.

    The text encoder goes to fp32 (master weights of the rows), frozen but for its embedding matrix; the other
    rows get no gradient (masked before clipping, so the norm and Adam see the token alone) and are put back
    after every step (AdamW's weight decay moves every row it holds), as diffusers' textual_inversion.py does.
    """

    def __init__(self, pipe, device):
        self.ids = added_ids(pipe.tokenizer)
        if not self.ids:
            raise ValueError("no token added to the tokenizer: rpo.embeddings.add_token first")
        encoder = pipe.text_encoder.to(device, torch.float32)
        encoder.requires_grad_(False)
        self.weight = encoder.get_input_embeddings().weight
        self.weight.requires_grad_(True)
        self.frozen = torch.ones(self.weight.shape[0], dtype=torch.bool, device=self.weight.device)
        self.frozen[self.ids] = False
        self.original = self.weight.detach().clone()

    def named(self) -> dict[str, torch.nn.Parameter]:
        return {"text_encoder.token_embedding.weight": self.weight}

    def mask_gradients(self) -> None:
        if self.weight.grad is not None:
            self.weight.grad[self.frozen] = 0

    def restore(self) -> None:
        with torch.no_grad():
            self.weight[self.frozen] = self.original[self.frozen]


class TextualInversion(DreamBooth):
    """L_sim through the text encoder; only the new token's embedding row trains, the U-Net is frozen."""

    name = "Textual Inversion"

    def __init__(self, pipe, cfg: Train, device, ref_dtype):
        super().__init__(pipe, cfg, device, ref_dtype)
        self.rows = TokenRows(pipe, device)

    def _unets(self, pipe, cfg, device, ref_dtype):
        unet = _frozen(pipe.unet, device, pick_dtype(cfg.mixed_precision, device))  # in the autocast precision
        _memory_options(unet, cfg)
        return unet, None

    @property
    def learning_rate(self) -> float:
        return self.cfg.ti_learning_rate

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {**super().trainable(), **self.rows.named()}

    def describe(self) -> str:
        return f"{self.name}, the embedding of {len(self.rows.ids)} new token(s) ({self.rows.weight.shape[1]} weights each)"

    def instance(self, data: PairData, step: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """c_inst through the text encoder at every step: the token's embedding is what trains."""
        if data.inst_ids is None:
            raise ValueError(f"{self.name} runs the text encoder at every step: PairData.inst_ids is missing")
        idx, _ = data.batch_indices(step - 1, self.cfg.batch_size, seed)
        ids = data.inst_ids.expand(len(idx), -1).to(device)
        return data.ref_latents[data.ref_index[idx]].to(device), self.pipe.text_encoder(ids)[0]

    def losses(self, data: PairData, step: int, seed: int, device, scheduler, generator, autocast) -> dict:
        z, cond = self.instance(data, step, seed, device)
        return instance_step_losses(self.unet, scheduler, z, cond, len(z), weight=0.0, generator=generator,
                                    autocast=autocast)

    def mask_gradients(self) -> None:
        self.rows.mask_gradients()

    def after_step(self) -> None:
        self.rows.restore()


class CustomDiffusion(TextualInversion):
    """L_sim + w * L_prior; the cross-attention key and value projections and the new token's row train."""

    name = "Custom Diffusion"

    def _unets(self, pipe, cfg, device, ref_dtype):
        unet = _frozen(pipe.unet, device, pick_dtype(cfg.mixed_precision, device))
        for p in cross_attention_kv(unet).values():
            p.data = p.data.float()  # fp32 master weights for the trained projections only
            p.requires_grad_(True)
        _memory_options(unet, cfg)
        return unet, None

    @property
    def learning_rate(self) -> float:
        return self.cfg.cd_learning_rate

    def describe(self) -> str:
        kv = sum(p.numel() for p in cross_attention_kv(self.unet).values())
        return (f"{self.name}, prior loss weight {self.cfg.prior_loss_weight:g}, cross-attention k/v ({kv} weights) "
                f"and {len(self.rows.ids)} new token(s)")

    def losses(self, data: PairData, step: int, seed: int, device, scheduler, generator, autocast) -> dict:
        return DreamBooth.losses(self, data, step, seed, device, scheduler, generator, autocast)


def cross_attention_kv(unet) -> dict[str, torch.nn.Parameter]:
    """The key and value projections of every cross-attention layer (attn2.to_k / to_v), by parameter name."""
    return {n: p for n, p in unet.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n}


def _frozen(unet, device, dtype: torch.dtype):
    unet = unet.to(device) if unet.dtype == dtype else unet.to(device, dtype)  # diffusers warns at any dtype cast
    unet.requires_grad_(False)
    return unet


def _memory_options(unet, cfg: Train) -> None:
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.compile:
        unet.compile()
