"""The DreamBench report, and the ablations report.

`report`: mean and std over subjects of DINO, CLIP-I, CLIP-T and the lambda-Harmonic reward,
for all subjects, objects and live ones; the published numbers beside ours, each with the
models behind it; per subject the selected step, training time and image counts, a grid
of pictures and the validation curve. Markdown and JSON (a DVC metric), figures as PNG and
the curves as CSV for `dvc plots show`.

`ablations`: the paper's Tables 2 and 3 side by side, from the variants of rpo.ablation.
Standard deviations are over subjects (population std, ddof = 0).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from rpo import artifacts as A
from rpo import plots
from rpo.dreambench import PUBLISHED, published_rpo
from rpo.images import load_rgb
from rpo.prompts import strip_token
from rpo.subjects import load_subject

log = logging.getLogger("rpo")
METRICS = ("dino", "clip_i", "clip_t", "reward")
GRID_PROMPTS = 5  # evaluation prompts shown per subject, evenly spread over the 25


# --- reading and summarising -------------------------------------------------------------


def read_metrics(files: list[Path]) -> pd.DataFrame:
    missing = [str(f) for f in files if not Path(f).exists()]
    if missing:
        raise A.ArtifactError(f"no metrics (run `evaluate` for them first): {', '.join(missing)}")
    return pd.DataFrame([A.read_json(f) for f in files])


def collect(root: Path, subjects: list[str]) -> pd.DataFrame:
    return read_metrics([A.Paths(root, s).metrics for s in subjects])


def _stats(values: pd.Series) -> dict:
    return {"mean": float(values.mean()), "std": float(values.std(ddof=0))}


def summarise(df: pd.DataFrame) -> dict:
    """Per group (all, objects, live): n, and mean and std over subjects of every metric."""
    groups = {"all": df, "objects": df[~df["live"].astype(bool)], "live": df[df["live"].astype(bool)]}
    return {name: {"n": int(len(g)), **{m: _stats(g[m]) for m in METRICS}} for name, g in groups.items() if len(g)}


def base_rows(df: pd.DataFrame) -> pd.DataFrame | None:
    """The base model's metrics per subject (evaluate.base_images), None when they were not drawn."""
    if "base" not in df or df["base"].isna().any():
        return None
    return pd.DataFrame([{"live": live, **base} for live, base in zip(df["live"], df["base"])])


def models_used(df: pd.DataFrame) -> dict:
    """The one set of models behind every row; subjects evaluated with different ones cannot share a mean."""
    first = df["models"].iloc[0]
    odd = [s for s, m in zip(df["subject"], df["models"]) if m != first]
    if odd:
        raise A.ArtifactError(f"metrics of {', '.join(odd)} come from other models than {df['subject'].iloc[0]}'s "
                              "(re-run `evaluate` for them with the current params)")
    return first


def _models_text(models: dict) -> str:
    return (f"base {models['base_model']} · reward {models['reward_model']} · DINO {models['dino_model']} · "
            f"CLIP {models['clip_model']} ({models['clip_backend']})")


# --- Markdown ----------------------------------------------------------------------------


def _cell(stat, digits: int = 3) -> str:
    if stat is None or stat != stat:  # None or NaN: nothing measured
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}" if isinstance(stat, dict) else f"{stat:.{digits}f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def summary_rows(summary: dict, base: dict | None, models: dict) -> list[list]:
    ours = _models_text(models)
    rows = [[f"RPO, {g}", s["n"], *(_cell(s[m]) for m in METRICS), "ours", ours] for g, s in summary.items()]
    rows += [[f"base model, {g}", s["n"], *(_cell(s[m]) for m in METRICS), "ours", ours + " (no fine-tuning)"]
             for g, s in (base or {}).items()]
    rows += [[p.method, 30, _cell(p.dino), _cell(p.clip_i), _cell(p.clip_t), "n/a", f"published: {p.source}", p.models]
             for p in PUBLISHED]
    return rows


def markdown(df: pd.DataFrame, summary: dict, base: dict | None, models: dict, lambda_val: float,
             figures: dict) -> str:
    r = f"r_λ (λ = {lambda_val:g})"
    lines = [f"# DreamBench report: {len(df)} subjects", "",
             "Mean ± std over subjects. Ours: " + _models_text(models) + ". Published rows come from other "
             "models and settings (SD 2.1 at 512 px, 4 images per prompt): compare with a run on the paper's settings "
             "(`rpo preset paper`).", ""]
    lines += _table(["row", "n", "DINO", "CLIP-I", "CLIP-T", r, "source", "models"],
                    summary_rows(summary, base, models))
    first = df.iloc[0]
    lines += ["", "## Protocol", "",
              f"- {int(first['n_prompts'])} DreamBench prompts, {int(first['images_per_prompt'])} image(s) each, per "
              "subject and model; DINO and CLIP-I: mean cosine over all (generated, reference) pairs; CLIP-T: "
              "cosine of the image and its prompt without the unique token; r_λ: lambda-Harmonic of the reward "
              f"model's ALIGN-I and ALIGN-T at lambda_val {lambda_val:g}. Std: over subjects (ddof 0).",
              f"- Preprocessing (`evaluate.preprocessing: {models['preprocessing']}`): "
              f"DINO: {models['dino_preprocessing']}; CLIP: {models['clip_preprocessing']}.", "",
              "## Per subject", ""]
    rows = [[s.subject, s.class_noun, "live" if s.live else "object", s.selected_step, _seconds(s.train_seconds),
             s.n_references, f"{s.n_prompts} x {s.images_per_prompt}", *(f"{getattr(s, m):.3f}" for m in METRICS),
             f"[grid]({figures[s.subject]['grid']}), [curve]({figures[s.subject]['curve']})"]
            for s in df.itertuples()]
    lines += _table(["subject", "class", "group", "selected step", "training (s)", "references", "images per model",
                     "DINO", "CLIP-I", "CLIP-T", r, "figures"], rows)
    lines += judges_section(df)
    lines += ["", "## Pictures", ""]
    for s, f in figures.items():
        lines += [f"### {s}", "", f"![{s}: references, base model, selected model]({f['grid']})", "",
                  f"![{s}: validation curve]({f['curve']})", ""]
    return "\n".join(lines)


# the world's judges (evaluate.judges: world): exact verdicts per image, their rates per subject and model
JUDGED = {"judge_subject": "subject", "judge_mark": "its mark", "judge_prompt": "prompt followed",
          "judge_both": "subject and prompt", "judge_home": "home leaked"}


def judges_section(df: pd.DataFrame) -> list[str]:
    """Ground truth beside the metric analogues: rates over each model's images (n/a: no image applies)."""
    if "judge_subject" not in df:
        return []
    rows = []
    for s in df.itertuples():
        base = getattr(s, "base", None)
        models = [("selected", s._asdict())] + ([("base", base)] if isinstance(base, dict) else [])
        rows += [[s.subject, name, *(_cell(m.get(k), 2) for k in JUDGED)] for name, m in models]
    return ["", "## Ground truth (the world's judges)", "",
            "Share of generated images in which the judges, classifiers trained on rendered scenes, see the subject "
            "(shape, colour, pattern, mark, class noun), its mark alone, everything the prompt asks for, both at "
            "once, and the subject's home background in a prompt that asks for another context.", "",
            *_table(["subject", "model", *JUDGED.values()], rows)]


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: a missing value (NaN) becomes null, which every JSON reader accepts."""
    return [{k: None if isinstance(v, float) and np.isnan(v) else v for k, v in row.items()}
            for row in df.to_dict(orient="records")]


def _seconds(value) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.0f}"


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


def draw(root: Path, params: dict, record: pd.Series, figures: Path, curves: Path) -> dict:
    """The subject's grid and validation curve (PNG) and the curve's data (CSV, for DVC plots)."""
    name, paths = record["subject"], A.Paths(root, record["subject"])
    curve_file = paths.eval_dir / "validation_curve.csv"
    if not curve_file.exists():
        raise A.ArtifactError(f"{curve_file}: missing (re-run `evaluate` for {name})")
    images = A.read_table(paths.eval_dir / "images.parquet", A.EVAL_IMAGES).to_pandas()
    subject = load_subject(root / params["paths"]["subjects"], name, check_images=False)
    grid = plots.image_grid(grid_rows(root, subject, images, params["unique_token"], int(record["selected_step"])))
    plots.save_image(grid, figures / f"{name}_grid.png")
    curve = pd.read_csv(curve_file)
    plots.validation_curve(curve, record["lambda_val"], f"{name}: validation", figures / f"{name}_curve.png")
    with A.atomic_file(curves / f"{name}.csv") as tmp:
        curve.to_csv(tmp, index=False)
    return {"grid": f"figures/{name}_grid.png", "curve": f"figures/{name}_curve.png"}


# --- the reports -------------------------------------------------------------------------


def report(root: Path, params: dict) -> Path:
    root = Path(root)
    df = collect(root, params["subjects"])
    models = models_used(df)
    summary = summarise(df)
    base = base_rows(df)
    base = summarise(base) if base is not None else None
    out = root / "reports"
    with A.atomic_dir(out / "figures") as fig_dir, A.atomic_dir(out / "curves") as curve_dir:
        figures = {r["subject"]: draw(root, params, r, fig_dir, curve_dir) for _, r in df.iterrows()}
    lam = params["validate"]["lambda_val"]
    A.write_json({
        "lambda_val": lam, "n_subjects": len(df), "models": models, "summary": summary, "base": base,
        "published": [dataclasses.asdict(p) for p in PUBLISHED],
        "subjects": _records(df.drop(columns=["models"])), "figures": figures,
    }, out / "summary.json")
    with A.atomic_file(out / "summary.md") as tmp:
        tmp.write_text(markdown(df, summary, base, models, lam, figures))
    log.info("report: %d subjects -> %s", len(df), out / "summary.md")
    return out / "summary.md"


def ablations(root: Path, params: dict, subjects: list[str], tables) -> Path:
    """Tables 2 and 3 of the paper: every row's mean ± std over `subjects`, side by side."""
    from rpo import ablation

    root, shared = Path(root), ablation.main_variant(params)
    tables_out, models = {}, None
    for table, entries in ablation.rows(params, tables).items():
        tables_out[table] = []
        for label, v in entries:
            df = read_metrics([ablation.metrics_path(root, s, v, params) for s in subjects])
            models = models or models_used(df)
            published = published_rpo(v.lambda_val) if table == 3 else None
            tables_out[table].append({
                "row": label, "variant": v.name, "training": v.training, "beta": 0.0 if v.training == "lsim"
                else params["train"]["beta"], "early_stopping": v.early_stopping, "lambda_val": v.lambda_val,
                "main_pipeline": v == shared, "selected_step": _stats(df["selected_step"]),
                **summarise(df)["all"], "published": dataclasses.asdict(published) if published else None})
    out = root / "reports"
    A.write_json({"subjects": subjects, "models": models, "tables": {str(t): r for t, r in tables_out.items()}},
                 out / "ablations.json")
    with A.atomic_file(out / "ablations.md") as tmp:
        tmp.write_text(ablations_markdown(tables_out, subjects, models, params))
    log.info("ablations: tables %s over %d subjects -> %s", list(tables_out), len(subjects), out / "ablations.md")
    return out / "ablations.md"


def ablations_markdown(tables: dict, subjects: list[str], models: dict, params: dict) -> str:
    metric_cols = ["DINO", "CLIP-I", "CLIP-T"]
    lines = [f"# Ablations over {len(subjects)} subject(s): {', '.join(subjects)}", "",
             f"Mean ± std over subjects. Models: {_models_text(models)}. Each row is a training run "
             f"(`rpo`: L_sim + L_pref at beta {params['train']['beta']:g}; `lsim`: beta 0) and a selection rule; "
             "rows marked * are the main pipeline's own result.", ""]
    if 2 in tables:
        lam = params["ablate"]["lambda_val"]
        lines += [f"## Table 2: the terms of RPO (lambda_val {lam:g})", ""]
        rows = [[r["row"] + ("*" if r["main_pipeline"] else ""), "yes" if r["training"] == "rpo" else "no",
                 "yes" if r["early_stopping"] else "no (last step)", r["variant"], r["n"], _cell(r["selected_step"], 1),
                 *(_cell(r[m]) for m in METRICS)] for r in tables[2]]
        lines += _table(["row", "L_pref", "early stopping", "variant", "n", "selected step", *metric_cols,
                         f"r_λ (λ = {lam:g})"], rows) + [""]
    if 3 in tables:
        lines += ["## Table 3: lambda_val of selection (one training run per subject)", ""]
        rows = [[r["row"] + ("*" if r["main_pipeline"] else ""), r["variant"], r["n"], _cell(r["selected_step"], 1),
                 *(_cell(r[m]) for m in METRICS),
                 *((_cell(r["published"][m]) for m in ("dino", "clip_i", "clip_t")) if r["published"] else ["n/a"] * 3)]
                for r in tables[3]]
        lines += _table(["row", "variant", "n", "selected step", *metric_cols, "r_λ (row's λ)",
                         *(f"published {c}" for c in metric_cols)], rows)
        lines += ["", f"Published: {PUBLISHED[0].source}; models: {PUBLISHED[0].models}.", ""]
    return "\n".join(lines)
