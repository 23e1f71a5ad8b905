"""Bradley-Terry preference labels (DESIGN.md section 1)."""

from __future__ import annotations

import numpy as np


def bt_probability(r_ref, r_gen, tau: float):
    """P(x_ref > x_gen | c) = sigmoid((r(x_ref, c) - r(x_gen, c)) / tau)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return 1.0 / (1.0 + np.exp(-(np.asarray(r_ref) - np.asarray(r_gen)) / tau))


def sample_labels(p, draws: int, seed: int) -> np.ndarray:
    """y ~ Bernoulli(P), `draws` independent seeded draws per pair: shape (draws, n_pairs).

    The official code draws a fresh label every epoch; storing the draws keeps that
    resampling while making training reproducible (epoch e uses draw e mod draws).
    """
    rng = np.random.default_rng(seed)
    p = np.asarray(p, dtype=np.float64)
    return (rng.random((draws, p.shape[0])) < p[None, :]).astype(np.int8)
