"""select: early stopping by validation reward; the checkpoint with the highest mean r_lambda_val (or the last one)."""

from __future__ import annotations

import logging
from pathlib import Path

from rpo import artifacts as A
from rpo import checkpoints
from rpo.selection import BASE_STEP, reward_by_step, select_step
from rpo.stages import StageSpec

log = logging.getLogger("rpo")

STAGE = StageSpec(
    deps=("validation", "checkpoints"),
    params=("model.base", "model.vae", "validate.lambda_val", "validate.early_stopping"),
    outs=("selected", "selection"),
    plots=(("validation_curve", "step", "reward"),),
)


def run(ctx) -> Path:
    v = ctx.cfg.validate
    validation = A.read_table(ctx.paths.validation, A.VALIDATION).to_pandas()
    step = select_step(validation, v.lambda_val, v.early_stopping)
    source = ctx.paths.checkpoints / f"step_{step:05d}"
    if not checkpoints.is_complete(source):
        raise A.ArtifactError(f"{source}: checkpoint of the selected step is missing (validate.keep=selectable keeps "
                              "the best step of each lambda_val on a 0.01 grid and the last; keep: all keeps every one)")
    curve = reward_by_step(validation, v.lambda_val).assign(selected=lambda d: d["step"] == step)
    with A.atomic_dir(ctx.paths.selected) as tmp:
        checkpoints.copy_folder(source, tmp / "unet")
        (tmp / "base_model.txt").write_text(ctx.cfg.model.base + "\n")
    with A.atomic_file(ctx.paths.validation_curve) as tmp:
        curve.to_csv(tmp, index=False)
    log.info("select: step %d (lambda_val %.2f, early stopping %s)", step, v.lambda_val, v.early_stopping)
    _compare_with_base(curve, step, ctx.subject.name)
    return A.write_json({
        "subject": ctx.subject.name, "step": step, "lambda_val": v.lambda_val,
        "early_stopping": v.early_stopping, "base_model": ctx.cfg.model.base, "vae": ctx.cfg.model.vae,
        "unet": ctx.rel(ctx.paths.selected / "unet"), "curve": curve.to_dict(orient="records"),
    }, ctx.paths.selection)


def _compare_with_base(curve, step: int, subject: str) -> None:
    """Say when no trained step beats the base model on validation: fine-tuning did not help by this measure."""
    base = curve[curve["step"] == BASE_STEP]
    if base.empty:
        return
    before, chosen = float(base["reward"].iloc[0]), float(curve.loc[curve["step"] == step, "reward"].iloc[0])
    if chosen <= before:
        log.warning("select: %s: the selected step %d scores %.4f on validation, not above the base model's %.4f "
                    "(step 0): fine-tuning did not raise the validation reward", subject, step, chosen, before)
