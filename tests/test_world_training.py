"""The world's resumable pretraining loop: a longer run is the shorter one extended, until its rate decays."""

from __future__ import annotations

import json

import pytest
import torch

from rpo_world.training import lr_at, train_loop


def test_constant_rate_holds_then_falls_linearly_to_zero_over_the_cooldown():
    rates = [lr_at(s, 20, 1.0, 2, "constant", cooldown=5) for s in range(20)]
    assert rates[:2] == [0.5, 1.0]  # warm-up
    assert rates[2:15] == [1.0] * 13
    assert rates[15:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def run(work, steps, cooldown):
    """A linear model fitted to a batch that is a pure function of the step, as the world's models are."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)

    def loss_fn(step):
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(8, 3, generator=gen)
        return ((model(x) - x.sum(1, keepdim=True)) ** 2).mean(), {}

    cfg = {"steps": steps, "cooldown_steps": cooldown, "lr": 0.1, "schedule": "constant", "checkpoint_every": 4}
    train_loop(model, opt, loss_fn, cfg=cfg, warmup=2, work=work)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_a_run_extended_before_its_decay_is_the_longer_run(tmp_path):
    run(tmp_path / "a", 8, 0)
    extended = run(tmp_path / "a", 12, 4)  # resumes at step 8, where the longer run's decay starts
    assert json.loads((tmp_path / "a" / "checkpoint" / "state.json").read_text())["step"] == 12
    assert torch.equal(extended, run(tmp_path / "fresh", 12, 4))


def test_a_checkpoint_inside_a_decay_is_not_extended(tmp_path):
    run(tmp_path / "a", 12, 4)
    rerun = run(tmp_path / "a", 16, 4)  # its rate fell from step 8; a 16-step run's falls from step 12
    assert torch.equal(rerun, run(tmp_path / "fresh", 16, 4))
    assert not torch.equal(rerun, run(tmp_path / "fresh12", 12, 4))
