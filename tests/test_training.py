"""One RPO step on the tiny Stable Diffusion: what gets gradients, both prediction types, the pair sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rpo.generate import load_pipeline
from rpo.train import PairData, diffusion_target, frozen_reference, rpo_step_losses, training_scheduler


@pytest.fixture(scope="module", params=["tiny", "tiny-v"])
def pipe(request):
    return load_pipeline(request.param, torch.device("cpu"))


def _batch(pipe, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 4, 16, 16)
    emb = torch.randn(3, 77, pipe.text_encoder.config.hidden_size, generator=g)
    return {"z_ref": torch.randn(shape, generator=g), "z_gen": torch.randn(shape, generator=g),
            "c_inst": emb[:1].expand(n, -1, -1), "c_pair": emb[1:3], "y": torch.tensor([1.0, 0.0]),
            "p": torch.tensor([0.6, 0.4])}


@pytest.mark.parametrize("share_noise,ref_prompt", [(False, "instance"), (True, "pair")])
def test_gradients_reach_only_the_trainable_unet(pipe, share_noise, ref_prompt):
    unet = pipe.unet
    ref = frozen_reference(unet, torch.float32)
    for m in (pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    unet.requires_grad_(True)
    out = rpo_step_losses(unet, ref, training_scheduler(pipe), _batch(pipe), beta=1.0, share_noise=share_noise,
                          ref_prompt=ref_prompt, generator=torch.Generator().manual_seed(0))
    unet.zero_grad(set_to_none=True)
    out["loss"].backward()
    assert all(p.grad is not None for p in unet.parameters() if p.requires_grad)
    assert sum(p.grad.abs().sum() for p in unet.parameters()) > 0
    for frozen in (ref, pipe.vae, pipe.text_encoder):
        assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
    assert out["loss"].item() == pytest.approx(out["l_sim"].item() + out["l_pref"].item(), rel=1e-5)
    # the frozen copy starts equal to the trainable U-Net: Delta is 0 before the first update
    assert out["delta_abs"].item() == pytest.approx(0.0, abs=1e-5)


def test_training_target_follows_the_scheduler_prediction_type(pipe):
    sched = training_scheduler(pipe)
    z, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    target = diffusion_target(sched, z, noise, t)
    if sched.config.prediction_type == "epsilon":
        assert torch.equal(target, noise)
    else:
        abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        assert torch.allclose(target, abar.sqrt() * noise - (1 - abar).sqrt() * z, atol=1e-5)


def test_pair_sampler_covers_each_pair_once_per_epoch_and_cycles_label_draws():
    n = 5
    data = PairData(ref_latents=torch.zeros(2, 4, 2, 2), gen_latents=torch.zeros(n, 4, 2, 2),
                    inst_embeds=torch.zeros(1, 3, 4), prompt_embeds=torch.zeros(1, 3, 4),
                    ref_index=np.arange(n) % 2, gen_index=np.arange(n), prompt_index=np.zeros(n, int),
                    p=np.full(n, 0.5), labels=np.zeros((3, n), np.int8))
    for epoch in range(4):
        seen, draws = [], set()
        for k in range(3):  # ceil(5 / 2) steps per epoch
            idx, draw = data.batch_indices(epoch * 3 + k, batch_size=2, seed=7)
            seen += idx.tolist()
            draws.add(draw)
        assert sorted(seen) == list(range(n))
        assert draws == {epoch % 3}
    assert np.array_equal(data.batch_indices(4, 2, 7)[0], data.batch_indices(4, 2, 7)[0])
