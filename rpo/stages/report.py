"""report: the DreamBench report over every subject of params.yaml.

Mean and std over subjects of DINO, CLIP-I, CLIP-T and the lambda-Harmonic reward, for all
subjects, objects and live ones, for the fine-tuned and the base model; the published numbers
beside ours, each with the models behind it; per subject the selected step and image counts, a
grid of pictures and the validation curve; any other number a run recorded (a plug-in judge's
verdicts) in a table of its own. Markdown and JSON (a DVC metric), figures as PNG, the curves as
CSV for `dvc plots show`. Wall times come from the run logs into `reports/timings.md`, which is
not a DVC output: outputs depend only on inputs, code and params.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from rpo import artifacts as A
from rpo import plots
from rpo.config import METHOD_NAMES, Config
from rpo.dreambench import PUBLISHED
from rpo.images import load_rgb
from rpo.prompts import strip_token
from rpo.stages import SUBJECT_STAGES, StageSpec
from rpo.subjects import load_subject
from rpo.tables import cell, records, table

log = logging.getLogger("rpo")

STAGE = StageSpec(
    deps=("metrics", "eval", "${paths.subjects}"),
    params=("subjects", "unique_token", "paths.subjects", "validate.lambda_val"),
    outs=("reports/summary.md", "reports/figures", "reports/curves"),
    metrics=("reports/summary.json",),
    per_subject=False,
)
METRICS = ("dino", "clip_i", "clip_t", "reward")
STANDARD = {"selected_step", "lambda_val", "n_prompts", "images_per_prompt", "n_references", "align_i", "align_t",
            *METRICS}
GRID_PROMPTS = 5  # evaluation prompts shown per subject, evenly spread over the 25


# --- reading and summarising -------------------------------------------------------------


def read_runs(paths: list[A.Paths]) -> pd.DataFrame:
    """One row per subject: its metrics (numbers) and what they are of (about.json)."""
    missing = [str(p.metrics) for p in paths if not p.metrics.exists()]
    if missing:
        raise A.ArtifactError(f"no metrics (run `evaluate` for them first): {', '.join(missing)}")
    return pd.DataFrame([{**A.read_json(p.about), **A.read_json(p.metrics)} for p in paths])


def stats(values: pd.Series) -> dict:
    return {"mean": float(values.mean()), "std": float(values.std(ddof=0))}


def summarise(df: pd.DataFrame, prefix: str = "") -> dict:
    """Per group (all, objects, live): n, and mean and std over subjects of every metric (`base_` ones with prefix)."""
    groups = {"all": df, "objects": df[~df["live"].astype(bool)], "live": df[df["live"].astype(bool)]}
    return {name: {"n": int(len(g)), **{m: stats(g[prefix + m]) for m in METRICS}}
            for name, g in groups.items() if len(g)}


def extra_columns(df: pd.DataFrame) -> list[str]:
    """Numbers a run recorded beyond the DreamBench ones: a plug-in judge's verdict rates."""
    return sorted(c for c in df.columns if c not in STANDARD and not c.startswith("base_")
                  and pd.api.types.is_numeric_dtype(df[c]) and c not in ("live", "early_stopping"))


def models_used(df: pd.DataFrame) -> dict:
    """The one set of models behind every row; subjects evaluated with different ones cannot share a mean."""
    first = df["models"].iloc[0]
    odd = [s for s, m in zip(df["subject"], df["models"]) if m != first]
    if odd:
        raise A.ArtifactError(f"metrics of {', '.join(odd)} come from other models than {df['subject'].iloc[0]}'s "
                              "(re-run `evaluate` for them with the current params)")
    return first


def models_text(models: dict) -> str:
    return (f"base {models['base_model']} · reward {models['reward_model']} · DINO {models['dino_model']} · "
            f"CLIP {models['clip_model']} ({models['clip_backend']})")


# --- Markdown ----------------------------------------------------------------------------


def method_name(df: pd.DataFrame) -> str:
    """The training method of the runs (evaluate's about.json; runs from before baselines existed are RPO)."""
    methods = sorted(set(df["method"].fillna("rpo"))) if "method" in df else ["rpo"]
    return " / ".join(METHOD_NAMES.get(m, m) for m in methods)


def summary_rows(summary: dict, base: dict | None, models: dict, method: str = "RPO") -> list[list]:
    ours = models_text(models)
    rows = [[f"{method}, {g}", s["n"], *(cell(s[m]) for m in METRICS), "ours", ours] for g, s in summary.items()]
    rows += [[f"base model, {g}", s["n"], *(cell(s[m]) for m in METRICS), "ours", ours + " (no fine-tuning)"]
             for g, s in (base or {}).items()]
    rows += [[p.method, 30, cell(p.dino), cell(p.clip_i), cell(p.clip_t), "n/a", f"published: {p.source}", p.models]
             for p in PUBLISHED]
    return rows


def markdown(df: pd.DataFrame, summary: dict, base: dict | None, models: dict, lambda_val: float,
             figures: dict) -> str:
    r = f"r_λ (λ = {lambda_val:g})"
    lines = [f"# DreamBench report: {len(df)} subjects", "",
             "Mean ± std over subjects. Ours: " + models_text(models) + ". Published rows come from other "
             "models and settings (SD 2.1 at 512 px, 4 images per prompt): compare with a run on the paper's settings "
             "(`rpo preset paper`).", ""]
    lines += table(["row", "n", "DINO", "CLIP-I", "CLIP-T", r, "source", "models"],
                   summary_rows(summary, base, models, method_name(df)))
    first = df.iloc[0]
    lines += ["", "## Protocol", "",
              f"- {int(first['n_prompts'])} DreamBench prompts, {int(first['images_per_prompt'])} image(s) each, per "
              "subject and model; DINO and CLIP-I: mean cosine over all (generated, reference) pairs; CLIP-T: "
              "cosine of the image and its prompt without the unique token; r_λ: lambda-Harmonic of the reward "
              f"model's ALIGN-I and ALIGN-T at lambda_val {lambda_val:g}. Std: over subjects (ddof 0).",
              f"- Preprocessing (`evaluate.preprocessing: {models['preprocessing']}`): "
              f"DINO: {models['dino_preprocessing']}; CLIP: {models['clip_preprocessing']}.",
              "- Wall times of every stage: `timings.md` beside this file.", "",
              "## Per subject", ""]
    rows = [[s.subject, s.class_noun, "live" if s.live else "object", s.selected_step, s.n_references,
             f"{s.n_prompts} x {s.images_per_prompt}", *(f"{getattr(s, m):.3f}" for m in METRICS),
             f"[grid]({figures[s.subject]['grid']}), [curve]({figures[s.subject]['curve']})"]
            for s in df.itertuples()]
    lines += table(["subject", "class", "group", "selected step", "references", "images per model",
                    "DINO", "CLIP-I", "CLIP-T", r, "figures"], rows)
    lines += extras_section(df)
    lines += ["", "## Pictures", ""]
    for s, f in figures.items():
        lines += [f"### {s}", "", f"![{s}: references, base model, selected model]({f['grid']})", "",
                  f"![{s}: validation curve]({f['curve']})", ""]
    return "\n".join(lines)


def extras_section(df: pd.DataFrame) -> list[str]:
    """Every further number the runs recorded (a judge's rates: fraction of images), selected and base model."""
    extra = extra_columns(df)
    if not extra:
        return []
    rows = []
    for s in df.to_dict(orient="records"):
        rows.append([s["subject"], "selected", *(cell(s.get(k), 2) for k in extra)])
        if any(f"base_{k}" in s for k in extra):
            rows.append([s["subject"], "base", *(cell(s.get(f"base_{k}"), 2) for k in extra)])
    return ["", "## Further measurements", "",
            "Recorded by the evaluation's judges (`evaluate.judges`): the share of generated images with each verdict.",
            "", *table(["subject", "model", *extra], rows)]


def timings(root: Path, subjects: list[str]) -> str:
    """Wall time of each stage per subject, from the run logs (`logs/`); n/a where a stage was restored, not run."""
    rows = []
    for s in subjects:
        paths = A.Paths(root, s)
        logs = {st: A.read_json(paths.run_log(st)) for st in SUBJECT_STAGES if paths.run_log(st).exists()}
        rows.append([s, *(f"{logs[st]['seconds']:.1f}" if st in logs else "n/a" for st in SUBJECT_STAGES[1:]),
                     next((v["device"] for v in logs.values() if v["device"] != "none"), "n/a")])
    return "\n".join(["# Wall times (seconds)", "", "From `logs/<subject>/<stage>.json`, written by each stage as it "
                      "ends on this machine (a stage restored from a DVC cache has none).", "",
                      *table(["subject", *SUBJECT_STAGES[1:], "device"], rows)]) + "\n"


# --- pictures ----------------------------------------------------------------------------


def grid_rows(root: Path, subject, images: pd.DataFrame, token: str, step: int) -> list:
    """References, then base and selected images (first image of each) over evenly spread prompts."""
    indices = sorted(images["prompt_index"].unique())
    chosen = {indices[round(i)] for i in np.linspace(0, len(indices) - 1, min(GRID_PROMPTS, len(indices)))}
    rows = [("references", [(p.name, load_rgb(p)) for p in subject.images])]
    for model, label in (("base", "base model"), ("selected", f"selected (step {step})")):
        pick = images[(images["model"] == model) & (images["image_index"] == 0) & images["prompt_index"].isin(chosen)]
        pick = pick.sort_values("prompt_index")
        if len(pick):
            rows.append((label, [(strip_token(p, token), load_rgb(root / path))
                                 for p, path in zip(pick["prompt"], pick["path"])]))
    return rows


def draw(root: Path, cfg: Config, record: dict, figures: Path, curves: Path) -> dict:
    """The subject's grid and validation curve (PNG) and the curve's data (CSV, for DVC plots)."""
    name, paths = record["subject"], A.Paths(root, record["subject"])
    curve_file = paths.eval_dir / "validation_curve.csv"
    if not curve_file.exists():
        raise A.ArtifactError(f"{curve_file}: missing (re-run `evaluate` for {name})")
    images = A.read_table(paths.eval_dir / "images.parquet", A.EVAL_IMAGES).to_pandas()
    subject = load_subject(root / cfg.paths.subjects, name, check_images=False)
    grid = plots.image_grid(grid_rows(root, subject, images, cfg.unique_token, int(record["selected_step"])))
    plots.save_image(grid, figures / f"{name}_grid.png")
    curve = pd.read_csv(curve_file)
    plots.validation_curve(curve, record["lambda_val"], f"{name}: validation", figures / f"{name}_curve.png")
    with A.atomic_file(curves / f"{name}.csv") as tmp:
        curve.to_csv(tmp, index=False)
    return {"grid": f"figures/{name}_grid.png", "curve": f"figures/{name}_curve.png"}


# --- the stage ---------------------------------------------------------------------------


def run(root: Path, cfg: Config) -> Path:
    root = Path(root)
    df = read_runs([A.Paths(root, s) for s in cfg.subjects])
    models = models_used(df)
    summary = summarise(df)
    base = summarise(df, "base_") if all(f"base_{m}" in df for m in METRICS) else None
    out = root / "reports"
    with A.atomic_dir(out / "figures") as fig_dir, A.atomic_dir(out / "curves") as curve_dir:
        figures = {r["subject"]: draw(root, cfg, r, fig_dir, curve_dir) for r in df.to_dict(orient="records")}
    lam = cfg.validate.lambda_val
    A.write_json({
        "lambda_val": lam, "n_subjects": len(df), "models": models, "summary": summary, "base": base,
        "published": [dataclasses.asdict(p) for p in PUBLISHED],
        "subjects": records(df.drop(columns=["models"])), "figures": figures,
    }, out / "summary.json")
    with A.atomic_file(out / "summary.md") as tmp:
        tmp.write_text(markdown(df, summary, base, models, lam, figures))
    with A.atomic_file(out / "timings.md") as tmp:
        tmp.write_text(timings(root, list(cfg.subjects)))
    log.info("report: %d subjects -> %s", len(df), out / "summary.md")
    return out / "summary.md"


def cli(args) -> None:
    from rpo.params import config_from_args

    print(run(Path.cwd(), config_from_args(args)))
