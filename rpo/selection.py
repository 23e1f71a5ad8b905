"""Checkpoint selection: early stopping by mean validation reward at lambda_val."""

from __future__ import annotations

import pandas as pd

from rpo.reward import harmonic

BASE_STEP = 0  # the validation before any training step


def reward_by_step(validation: pd.DataFrame, lambda_val: float) -> pd.DataFrame:
    """Per validation step: mean ALIGN-I, mean ALIGN-T and mean per-image r_lambda_val."""
    df = validation.assign(reward=harmonic(validation["align_i"], validation["align_t"], lambda_val))
    return df.groupby("step", sort=True)[["align_i", "align_t", "reward"]].mean().reset_index()


def trained(validation: pd.DataFrame) -> pd.DataFrame:
    """The records of fine-tuned steps: step 0 (`validate.at_start`) is the base model, shown, never selected."""
    return validation[validation["step"] > BASE_STEP]


def select_step(validation: pd.DataFrame, lambda_val: float, early_stopping: bool = True) -> int:
    """argmax over trained steps of mean reward, ties to the earliest step; the last step without early stopping."""
    curve = reward_by_step(trained(validation), lambda_val)
    if curve.empty:
        raise ValueError("no validation records to select from")
    if not early_stopping:
        return int(curve["step"].max())
    best = curve["reward"].max()
    return int(curve.loc[curve["reward"] == best, "step"].min())
