"""labels: preference pairs (x_ref, x_gen, c), their Bradley-Terry probability P and seeded label draws."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from rpo import artifacts as A
from rpo.preference import bt_probability, sample_labels
from rpo.stages import StageSpec

log = logging.getLogger("rpo")

STAGE = StageSpec(
    deps=("rewards",),
    params=("seed", "labels"),
    outs=("labels",),
)


def make_pairs(rewards: pd.DataFrame) -> pd.DataFrame:
    """One pair per prior image: (reference cycled over the subject's photos, that image, its prompt)."""
    refs = sorted(rewards.loc[rewards["kind"] == "ref", "image"].unique())
    gens = rewards[rewards["kind"] == "gen"].sort_values(["prompt_index", "image"]).reset_index(drop=True)
    ref_reward = rewards[rewards["kind"] == "ref"].set_index(["image", "prompt_index"])["reward"]
    ref_image = [refs[i % len(refs)] for i in range(len(gens))]
    return pd.DataFrame({
        "pair_id": np.arange(len(gens), dtype=np.int32), "ref_image": ref_image, "gen_image": gens["image"],
        "prompt_index": gens["prompt_index"], "prompt": gens["prompt"],
        "r_ref": [ref_reward[(r, pi)] for r, pi in zip(ref_image, gens["prompt_index"])], "r_gen": gens["reward"],
    })


def run(ctx) -> Path:
    cfg = ctx.cfg.labels
    pairs = make_pairs(A.read_table(ctx.paths.rewards, A.REWARDS).to_pandas())
    pairs["p"] = bt_probability(pairs["r_ref"], pairs["r_gen"], cfg.tau)
    y = sample_labels(pairs["p"], cfg.draws, ctx.cfg.seed)
    table = pd.concat([pairs.assign(draw=d, y=y[d]) for d in range(cfg.draws)], ignore_index=True)
    log.info("labels: %d pairs x %d draws, mean |P - 0.5| = %.4f, label mean = %.3f",
             len(pairs), cfg.draws, float((pairs["p"] - 0.5).abs().mean()), float(y.mean()))
    return A.write_table(A.pa.Table.from_pandas(table, preserve_index=False), A.LABELS, ctx.paths.labels)
