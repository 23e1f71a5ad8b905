"""The method of DESIGN.md section 1 on plain tensors: reward, Bradley-Terry labels, loss, selection."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rpo import checkpoints
from rpo.config import Validate
from rpo.loss import per_sample_error, preference_loss, preference_margin, rpo_loss
from rpo.preference import bt_probability, sample_labels
from rpo.prompts import instance_prompt, strip_token, training_prompts
from rpo.reward import align_i, align_t, harmonic
from rpo.selection import select_step


def test_worked_example_of_the_harmonic_reward():
    # DESIGN.md: the two score pairs share an arithmetic mean (0.455); the harmonic reward tells them apart
    assert harmonic(0.9, 0.01, 0.5) == pytest.approx(0.020, abs=5e-4)
    assert harmonic(0.7, 0.21, 0.5) == pytest.approx(0.323, abs=5e-4)


def test_lambda_limits_are_exact_even_with_a_zero_score():
    assert harmonic(0.9, 0.3, 0.0) == 0.3
    assert harmonic(0.9, 0.3, 1.0) == 0.9
    assert harmonic(0.0, 0.4, 0.0) == 0.4  # ALIGN-I ignored: no division by zero
    assert harmonic(0.6, 0.0, 1.0) == 0.6
    assert harmonic(0.9, 0.3, 1e-9) == pytest.approx(0.3, rel=1e-6)
    with pytest.raises(ValueError, match="lambda"):
        harmonic(0.5, 0.5, 1.5)


def test_harmonic_is_elementwise_on_tensors():
    ai, at = torch.tensor([0.9, 0.7]), torch.tensor([0.01, 0.21])
    assert torch.allclose(harmonic(ai, at, 0.5), torch.tensor([0.0198, 0.3231]), atol=1e-4)


def _unit_rows(x):
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=-1)


def test_align_i_is_the_mean_over_references_mapped_to_unit_interval():
    refs = _unit_rows([[1, 0], [0, 1], [-1, 0]])
    img = _unit_rows([[1, 0]])
    # cosines 1, 0, -1 -> (c + 1) / 2 = 1, 0.5, 0 -> mean 0.5
    assert align_i(img, refs).item() == pytest.approx(0.5)


def test_align_i_leave_one_out_for_reference_images():
    refs = _unit_rows([[1, 0], [0, 1], [1, 1]])
    loo = align_i(refs, refs, leave_out=torch.arange(3))
    cos = refs @ refs.T
    expected = [((cos[i] + 1) / 2).sum().item() - 1.0 for i in range(3)]  # drop the self term (score 1)
    assert loo.tolist() == pytest.approx([e / 2 for e in expected])
    assert (loo < 1.0).all()  # a reference never scores itself
    # a subject of one photo: nothing to leave it out against, so it is scored against itself
    assert align_i(refs[:1], refs[:1], leave_out=torch.tensor([0])).tolist() == pytest.approx([1.0])


def test_align_t_pairs_row_i_with_text_i():
    img = _unit_rows([[1, 0], [0, 1]])
    txt = _unit_rows([[1, 0], [1, 0]])
    assert align_t(img, txt).tolist() == pytest.approx([1.0, 0.5])


def test_unique_token_is_removed_as_a_whole_word():
    assert strip_token("a sks dog on the Moon", "sks") == "a dog on the Moon"
    assert strip_token("a green sks toy", "sks") == "a green toy"
    assert strip_token("a sksy dog", "sks") == "a sksy dog"
    assert all("sks" in p for p in training_prompts("sks", "dog", live=True))
    assert instance_prompt("sks", "dog") == "a photo of sks dog"


def test_bradley_terry_probability_and_temperature():
    assert bt_probability(0.7, 0.2, 1.0) == pytest.approx(1 / (1 + math.exp(-0.5)))
    assert bt_probability(0.7, 0.2, 0.1) == pytest.approx(1 / (1 + math.exp(-5.0)))
    assert bt_probability(0.3, 0.3, 1.0) == pytest.approx(0.5)
    # rewards in [0, 1] and tau = 1 can never leave [0.27, 0.73] (DESIGN.md)
    assert bt_probability(0.0, 1.0, 1.0) == pytest.approx(0.2689, abs=1e-4)
    with pytest.raises(ValueError):
        bt_probability(0.5, 0.5, 0.0)


def test_label_draws_follow_p_and_are_seeded():
    p = np.array([0.05, 0.3, 0.5, 0.9])
    y = sample_labels(p, draws=20000, seed=3)
    assert y.shape == (20000, 4) and set(np.unique(y)) <= {0, 1}
    freq = y.mean(axis=0)
    sigma = np.sqrt(p * (1 - p) / 20000)
    assert np.all(np.abs(freq - p) < 5 * sigma)
    assert np.array_equal(y, sample_labels(p, draws=20000, seed=3))
    assert not np.array_equal(y, sample_labels(p, draws=20000, seed=4))


def test_preference_loss_against_a_hand_computation():
    l_ref_ref, l_theta_ref = torch.tensor([0.50, 0.40]), torch.tensor([0.30, 0.45])
    l_ref_gen, l_theta_gen = torch.tensor([0.20, 0.60]), torch.tensor([0.25, 0.50])
    y = torch.tensor([1.0, 0.0])
    beta = 2.0
    delta = preference_margin(l_ref_ref=l_ref_ref, l_theta_ref=l_theta_ref, l_ref_gen=l_ref_gen,
                              l_theta_gen=l_theta_gen, beta=beta)
    # pair 0: 2 * ((0.5 - 0.3) - (0.2 - 0.25)) = 0.5 ; pair 1: 2 * ((0.4 - 0.45) - (0.6 - 0.5)) = -0.3
    assert delta.tolist() == pytest.approx([0.5, -0.3])
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    hand = -(math.log(sig(0.5)) + math.log(sig(0.3))) / 2  # y=1: log s(D); y=0: log s(-D)
    assert preference_loss(delta, y).item() == pytest.approx(hand, rel=1e-6)


def test_total_loss_and_beta_zero_leaves_l_sim_alone():
    l_inst = torch.tensor([0.3, 0.5], requires_grad=True)
    l_theta_ref = torch.tensor([0.3, 0.5], requires_grad=True)
    l_theta_gen = torch.tensor([0.2, 0.7], requires_grad=True)
    l_ref = torch.tensor([0.4, 0.4])
    y = torch.tensor([1.0, 0.0])
    terms = dict(l_theta_ref_inst=l_inst, l_ref_ref=l_ref, l_theta_ref=l_theta_ref, l_ref_gen=l_ref,
                 l_theta_gen=l_theta_gen, y=y)
    full = rpo_loss(**terms, beta=1.0)
    assert full["loss"].item() == pytest.approx(full["l_sim"].item() + full["l_pref"].item())
    assert full["l_sim"].item() == pytest.approx(0.4)

    off = rpo_loss(**terms, beta=0.0)
    assert off["l_pref"].item() == pytest.approx(math.log(2))
    off["loss"].backward()
    assert torch.allclose(l_inst.grad, torch.tensor([0.5, 0.5]))  # d mean / d l_i
    assert l_theta_ref.grad is None or torch.all(l_theta_ref.grad == 0)
    assert l_theta_gen.grad is None or torch.all(l_theta_gen.grad == 0)


def test_per_sample_error_is_a_mean_over_all_but_the_batch():
    pred, target = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    target[1] *= 2
    assert per_sample_error(pred, target).tolist() == [1.0, 4.0]


def _validation(rewards_by_step: dict[int, list[tuple[float, float]]]) -> pd.DataFrame:
    rows = [{"step": s, "align_i": ai, "align_t": at} for s, scores in rewards_by_step.items() for ai, at in scores]
    return pd.DataFrame(rows)


def test_selection_takes_the_argmax_at_lambda_val_ties_to_the_earliest():
    val = _validation({10: [(0.6, 0.6)], 20: [(0.9, 0.5)], 30: [(0.5, 0.9)], 40: [(0.6, 0.6)]})
    assert select_step(val, 1.0) == 20  # ALIGN-I only
    assert select_step(val, 0.0) == 30  # ALIGN-T only
    tied = _validation({10: [(0.7, 0.7)], 20: [(0.7, 0.7)], 30: [(0.1, 0.1)]})
    assert select_step(tied, 0.5) == 10
    assert select_step(val, 0.5, early_stopping=False) == 40


def test_step_0_the_base_model_is_on_the_curve_but_never_selected():
    val = _validation({0: [(0.9, 0.9)], 10: [(0.6, 0.6)], 20: [(0.8, 0.5)]})
    assert select_step(val, 0.5) == 20 and select_step(val, 0.0) == 10
    assert checkpoints.selectable_steps(val) == {10, 20}
    assert 0 not in checkpoints.kept_steps(val, Validate(keep=3, lambda_val=0.5))
