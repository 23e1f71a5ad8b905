"""The report's pictures: a grid of images per subject (PIL) and the validation curve (matplotlib).

matplotlib is used through its object API (Figure + Agg canvas), so no global backend
or pyplot state is touched: safe inside workers and test processes. Files are written
atomically like every other artifact.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps

from rpo.artifacts import atomic_file
from rpo.selection import BASE_STEP

CELL = 160  # pixels per picture in a grid
LABEL_W = 96  # width of the row-label column
CAPTION_H = 30  # two lines of caption under each picture


def image_grid(rows: list[tuple[str, list[tuple[str, Image.Image]]]], cell: int = CELL) -> Image.Image:
    """One row per (label, [(caption, image), ...]); each picture padded into a cell, caption below it."""
    font = ImageFont.load_default(size=11)
    cols = max(len(items) for _, items in rows)
    row_h = cell + CAPTION_H
    grid = Image.new("RGB", (LABEL_W + cols * cell, len(rows) * row_h), "white")
    draw = ImageDraw.Draw(grid)
    for r, (label, items) in enumerate(rows):
        y = r * row_h
        draw.multiline_text((6, y + cell // 2 - 8), textwrap.fill(label, 12), fill="black", font=font)
        for c, (caption, image) in enumerate(items):
            x = LABEL_W + c * cell
            thumb = ImageOps.pad(image.convert("RGB"), (cell - 4, cell - 4), Image.Resampling.BICUBIC, color="white")
            grid.paste(thumb, (x + 2, y + 2))
            lines = textwrap.wrap(caption, 26)[:2]
            draw.multiline_text((x + 2, y + cell), "\n".join(lines), fill="black", font=font, spacing=2)
    return grid


def save_image(image: Image.Image, path: Path) -> Path:
    with atomic_file(path) as tmp:
        image.save(tmp, format="PNG")
    return path


def validation_curve(curve: pd.DataFrame, lambda_val: float, title: str, path: Path) -> Path:
    """Mean r_lambda_val against step with the selected step marked; ALIGN-I and ALIGN-T beside it.

    `curve` has columns step, reward, align_i, align_t, selected (select's validation curve).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    chosen = curve[curve["selected"].astype(bool)]
    fig = Figure(figsize=(9, 3.4), dpi=100)
    reward_ax, align_ax = fig.subplots(1, 2)
    reward_ax.plot(curve["step"], curve["reward"], marker="o", color="tab:blue", label="mean reward")
    reward_ax.scatter(chosen["step"], chosen["reward"], s=140, facecolors="none", edgecolors="tab:red", linewidths=2,
                      zorder=3, label=f"selected: step {int(chosen['step'].iloc[0])}" if len(chosen) else "selected")
    base = curve[curve["step"] == BASE_STEP]  # validate.at_start: the base model, where training started
    if len(base):
        reward_ax.axhline(float(base["reward"].iloc[0]), color="grey", linestyle=":", linewidth=1,
                          label="base model (step 0)")
    reward_ax.set(xlabel="step", ylabel=f"mean r_λ (λ_val = {lambda_val:g})", title=title)
    align_ax.plot(curve["step"], curve["align_i"], marker="o", color="tab:green", label="ALIGN-I")
    align_ax.plot(curve["step"], curve["align_t"], marker="s", color="tab:orange", label="ALIGN-T")
    align_ax.set(xlabel="step", ylabel="mean score", title="reward components")
    for ax in (reward_ax, align_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are integers
        for step in chosen["step"]:
            ax.axvline(step, color="tab:red", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
