"""The report: a table over subjects (mean and std of every metric), as Markdown and JSON."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from rpo import artifacts as A

log = logging.getLogger("rpo")
METRICS = ("dino", "clip_i", "clip_t", "reward")


def collect(root: Path, subjects: list[str]) -> pd.DataFrame:
    missing = [s for s in subjects if not A.Paths(root, s).metrics.exists()]
    if missing:
        raise A.ArtifactError(f"no metrics for {', '.join(missing)} (run `evaluate` for them first): "
                              + ", ".join(str(A.Paths(root, s).metrics) for s in missing))
    return pd.DataFrame([A.read_json(A.Paths(root, s).metrics) for s in subjects])


def summarise(df: pd.DataFrame) -> dict:
    groups = {"all": df, "objects": df[~df["live"]], "live": df[df["live"]]}
    return {name: {"n": int(len(g)), **{m: {"mean": float(g[m].mean()), "std": float(g[m].std(ddof=0))}
                                          for m in METRICS}}
            for name, g in groups.items() if len(g)}


def markdown(df: pd.DataFrame, summary: dict, lambda_val: float) -> str:
    lines = [f"# RPO report ({len(df)} subjects, lambda_val = {lambda_val})", "",
             "| subject | class | live | step | DINO | CLIP-I | CLIP-T | reward |", "|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        lines.append(f"| {r.subject} | {r.class_noun} | {'yes' if r.live else 'no'} | {r.selected_step} | "
                     + " | ".join(f"{getattr(r, m):.4f}" for m in METRICS) + " |")
    lines += ["", "| group | n | DINO | CLIP-I | CLIP-T | reward |", "|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['n']} | " + " | ".join(f"{s[m]['mean']:.4f} ± {s[m]['std']:.4f}" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def report(root: Path, params: dict) -> Path:
    root = Path(root)
    df = collect(root, params["subjects"])
    summary = summarise(df)
    out = root / "reports"
    A.write_json({"subjects": df.drop(columns=["models"]).to_dict(orient="records"), "summary": summary},
                 out / "summary.json")
    with A.atomic_file(out / "summary.md") as tmp:
        tmp.write_text(markdown(df, summary, params["validate"]["lambda_val"]))
    log.info("report: %d subjects -> %s", len(df), out / "summary.md")
    return out / "summary.md"
