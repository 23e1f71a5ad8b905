"""RPO's loss as pure tensor functions (DESIGN.md section 1), in the style of TRL's DPO losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """l(x, c) = mean((target - eps_(.)(z_t, t, c))^2) over every dim but the batch."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def preference_margin(*, l_ref_ref, l_theta_ref, l_ref_gen, l_theta_gen, beta: float) -> torch.Tensor:
    """Delta = beta * [(l_ref(x_ref) - l_theta(x_ref)) - (l_ref(x_gen, c) - l_theta(x_gen, c))]."""
    return beta * ((l_ref_ref - l_theta_ref) - (l_ref_gen - l_theta_gen))


def preference_loss(delta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_pref = -mean[y log sigmoid(Delta) + (1 - y) log sigmoid(-Delta)]."""
    y = y.to(delta.dtype)
    return -(y * F.logsigmoid(delta) + (1 - y) * F.logsigmoid(-delta)).mean()


def similarity_loss(l_theta_ref_inst: torch.Tensor) -> torch.Tensor:
    """L_sim = mean l_theta(x_ref, c_inst)."""
    return l_theta_ref_inst.mean()


def rpo_loss(*, l_theta_ref_inst, l_ref_ref, l_theta_ref, l_ref_gen, l_theta_gen, y, beta: float) -> dict:
    """L = L_sim + L_pref, with the diagnostics DESIGN.md asks to log every step.

    beta = 0 makes Delta = 0, so L_pref is the constant ln 2 with zero gradient:
    the "pure L_sim" ablation.
    """
    delta = preference_margin(l_ref_ref=l_ref_ref, l_theta_ref=l_theta_ref, l_ref_gen=l_ref_gen,
                              l_theta_gen=l_theta_gen, beta=beta)
    l_sim = similarity_loss(l_theta_ref_inst)
    l_pref = preference_loss(delta, y)
    return {"loss": l_sim + l_pref, "l_sim": l_sim, "l_pref": l_pref, "delta_abs": delta.detach().abs().mean()}


def prior_preservation_loss(*, l_theta_inst, l_theta_prior=None, weight: float) -> dict:
    """L = L_sim + w * L_prior, DreamBooth's prior preservation (diffusers' train_dreambooth.py).

    L_prior = mean l_theta(x_class, c_class) over the base model's images of the class prompt;
    without class images (w = 0, or Textual Inversion) L = L_sim.
    """
    l_sim = similarity_loss(l_theta_inst)
    if l_theta_prior is None:
        return {"loss": l_sim, "l_sim": l_sim}
    l_prior = l_theta_prior.mean()
    return {"loss": l_sim + weight * l_prior, "l_sim": l_sim, "l_prior": l_prior}
