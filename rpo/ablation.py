"""Ablations as a DVC pipeline beside the main one: the paper's Tables 2 and 3, its baselines, any plan of rows x seeds.

A row is a training run (overrides of the main params, e.g. `train.beta: 0` for pure L_sim, or
`train.method: dreambooth` for a baseline) and a selection rule (early stopping at a lambda_val,
or the last step); a plan runs every row
for every subject and seed. Each (row, seed) is a set of overrides, and a stage is re-run for it
only if the overrides reach it: if the stage reads one of them or reads an output of a stage
that does (rpo.stages.reached). A reached stage writes under ablations/<the overrides that reach
it>, so rows share every stage they can share: all of Table 3 selects from the main pipeline's
one training, a second seed re-runs prior, score and labels once for all its rows, and a row
equal to the main settings is the main pipeline's own result.

`rpo ablate` writes ablations/dvc.yaml (rendered by rpo.deps like dvc.yaml) and runs
`dvc repro ablations/dvc.yaml`: DVC runs what is missing, main stages included, and skips the
rest; its dvc.lock records which training every row selected from. The report gives per row
the mean, std and 95% interval over subjects and seeds of every metric (the world's judges'
rates too), and what the preference term did during each training.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rpo import artifacts as A
from rpo import config as C
from rpo import params as P
from rpo import stages
from rpo.dreambench import PUBLISHED
from rpo.tables import cell, records, stats, table

log = logging.getLogger("rpo")
ABLATIONS = stages.ABLATIONS
PLAN = f"{ABLATIONS}/plan.json"  # the plan ablations/dvc.yaml was written for: its report reads it
TABLES = (2, 3)
METRICS = ("dino", "clip_i", "clip_t", "reward")
DIAGNOSTICS = ("delta_abs", "p_dev", "label_mean", "l_pref")  # columns of train_log.csv: is L_pref doing anything?


@dataclass(frozen=True)
class Row:
    """One compared model: a training run (overrides of the main params) and a selection rule."""

    label: str
    training: tuple[tuple[str, object], ...]  # e.g. (("train.beta", 0.0),)
    early_stopping: bool
    lambda_val: float

    def settings(self) -> dict:
        return {**dict(self.training), "validate.early_stopping": self.early_stopping,
                "validate.lambda_val": self.lambda_val}


@dataclass
class Plan:
    """Rows x seeds x subjects; `tables` groups the rows for the report (a row may sit in several)."""

    tables: dict[str, list[Row]]
    seeds: list[int]
    subjects: list[str]
    base: Row | None = None  # the row whose evaluation also draws the base model (default: the first)
    rows: list[Row] = field(init=False)

    def __post_init__(self):
        self.rows = list(dict.fromkeys(r for rows in self.tables.values() for r in rows))
        self.base = self.base or self.rows[0]

    def to_json(self) -> dict:
        row = lambda r: {"label": r.label, "training": dict(r.training), "early_stopping": r.early_stopping,  # noqa: E731
                         "lambda_val": r.lambda_val}
        return {"tables": {t: [row(r) for r in rows] for t, rows in self.tables.items()}, "seeds": self.seeds,
                "subjects": self.subjects, "base": row(self.base)}

    @classmethod
    def from_json(cls, data: dict) -> "Plan":
        row = lambda r: Row(r["label"], tuple(sorted(r["training"].items())), r["early_stopping"],  # noqa: E731
                            r["lambda_val"])
        return cls({t: [row(r) for r in rows] for t, rows in data["tables"].items()}, data["seeds"], data["subjects"],
                   base=row(data["base"]))


def overrides(cfg: C.Config, row: Row, seed: int, plan: Plan) -> dict:
    """The params a (row, seed) changes, without those equal to the main ones (so shared stages stay shared)."""
    out = changed({**row.settings(), "seed": seed}, C.to_dict(cfg))
    if row.settings() != plan.base.settings() and cfg.evaluate.base_images:
        out["evaluate.base_images"] = False  # the base model's images do not depend on the row: drawn once
    return out


# --- the tables of the paper ----------------------------------------------------------------


def table2(cfg: C.Config) -> list[Row]:
    lam, main = cfg.ablate.lambda_val, cfg.train.beta
    return [Row("pure L_sim (beta = 0)", (("train.beta", 0.0),), False, lam),
            Row("L_pref without early stopping", (("train.beta", main),), False, lam),
            Row("early stopping without L_pref", (("train.beta", 0.0),), True, lam),
            Row("full RPO", (("train.beta", main),), True, lam)]


def table3(cfg: C.Config) -> list[Row]:
    return [Row(f"lambda_val = {lam:g}", (("train.beta", cfg.train.beta),), True, lam) for lam in cfg.ablate.lambda_vals]


BASELINES_TITLE = "Baselines: RPO against DreamBooth, Textual Inversion and Custom Diffusion"


def baselines(cfg: C.Config, methods) -> list[Row]:
    """Each baseline (train.method) at its last step and with early stopping, beside full RPO: the paper's comparison."""
    lam = cfg.ablate.lambda_val
    out = [Row("full RPO", (("train.beta", cfg.train.beta),), True, lam)]
    for m in methods:
        out += [Row(f"{C.METHOD_NAMES[m]}, no early stopping", (("train.method", m),), False, lam),
                Row(f"{C.METHOD_NAMES[m]}, early stopping", (("train.method", m),), True, lam)]
    return out


def paper_plan(cfg: C.Config, subjects: list[str], tables=TABLES, baseline_methods=()) -> Plan:
    """Tables 2 and/or 3 for `subjects`, and the baselines of `baseline_methods`, over `ablate.seeds` (default: the
    main seed)."""
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise P.ParamsError(f"tables {unknown}: the ablations are tables {', '.join(map(str, TABLES))}")
    if cfg.train.method != "rpo":
        raise P.ParamsError(f"train.method: the ablations vary RPO's terms; the main training must be rpo, got "
                            f"{cfg.train.method} (the baselines are rows: rpo ablate --baselines)")
    if cfg.train.beta == 0:
        raise P.ParamsError("train.beta: 0 makes the main training pure L_sim; the ablations compare it with L_pref")
    if cfg.validate.keep == "selectable":
        off = [v for v in (cfg.ablate.lambda_val, *cfg.ablate.lambda_vals) if abs(v * 100 - round(v * 100)) > 1e-9]
        if off:
            raise P.ParamsError(f"ablate: {off} not on the 0.01 grid, whose best checkpoints validate.keep: selectable keeps")
    build = {2: ("Table 2: the terms of RPO", table2), 3: ("Table 3: lambda_val of selection", table3)}
    rows = {build[t][0]: build[t][1](cfg) for t in tables}
    if baseline_methods:
        rows[BASELINES_TITLE] = baselines(cfg, baseline_methods)
    main = next((r for rs in rows.values() for r in rs if is_main(r.settings(), C.to_dict(cfg))), None)
    return Plan(rows, list(cfg.ablate.seeds) or [cfg.seed], subjects, base=main)


def changed(settings: dict, params: dict) -> dict:
    """The settings whose value differs from the main params'."""
    return {k: v for k, v in settings.items() if P.get(params, k) != v}


def is_main(settings: dict, params: dict) -> bool:
    """A row is the main pipeline's own result when every setting it names has the main params' value."""
    return not changed(settings, params)


# --- where a (row, seed) lives ----------------------------------------------------------------


def paths(root: Path, subject: str, over: dict, cfg: C.Config) -> A.Paths:
    return A.Paths(Path(root), subject, stages.variant_roots(Path(root), over, cfg))


# --- the DVC pipeline ---------------------------------------------------------------------


def _declared_params(entries, dropped: set[str]) -> list:
    """A stage's params less the overridden ones; a section holding one is expanded into its other keys."""
    out = []
    for e in entries:
        if not any(k == e or k.startswith(e + ".") for k in dropped):
            out.append(e)
        elif e not in dropped:
            out += [k for k in C.SPEC if k.startswith(e + ".") and k not in dropped]
    return out


def _set(over: dict) -> str:
    return " ".join(f"--set {k}={json.dumps(v)}" for k, v in over.items())


def pipeline(root: Path, cfg: C.Config, plan: Plan) -> dict:
    """ablations/dvc.yaml: every stage some (row, seed) reaches, once, and the report."""
    from rpo.deps import closure_code, render

    entries = {}
    for row in plan.rows:
        for seed in plan.seeds:
            over = overrides(cfg, row, seed, plan)
            reached = stages.reached(over, cfg)
            roots = {s: Path(ABLATIONS) / stages.slug(o) for s, o in reached.items() if o}
            if reached["check"]:
                raise P.ParamsError(f"ablation overrides {sorted(reached['check'])}: a row cannot change what `check` "
                                    "reads (subjects, model.resolution)")
            for stage, mine in reached.items():
                if not mine:
                    continue
                name = f"{stage}-{stages.slug(mine)}"
                if name in entries:
                    continue
                variant = C.from_dict(P.apply_overrides(C.to_dict(cfg), mine))
                body = render(stage, variant, root, paths=A.Paths(Path("."), "${item}", roots),
                              cmd=f"rpo {_set(mine)} stage {stage} --subject ${{item}} --ablation",
                              params=_declared_params(stages.spec(stage).params_for(variant), set(mine)),
                              values={"paths.subjects": cfg.paths.subjects})
                entries[name] = {"foreach": plan.subjects, "do": {"wdir": "..", **body["do"]}}
    entries["report"] = {
        "wdir": "..",
        "cmd": "rpo ablate --report",
        "deps": [PLAN, *sorted({p.as_posix() for p in report_inputs(Path("."), cfg, plan)}),
                 *closure_code(["rpo/ablation.py"], root)],
        "params": ["ablate", "seed", "train.beta", "validate.lambda_val", "validate.early_stopping"],
        "outs": ["reports/ablations.md"], "metrics": ["reports/ablations.json"],
    }
    return {"stages": entries}


def runs(root: Path, cfg: C.Config, plan: Plan):
    """(row, seed, subject, overrides, paths) of every run of the plan."""
    for row in plan.rows:
        for seed in plan.seeds:
            over = overrides(cfg, row, seed, plan)
            for s in plan.subjects:
                yield row, seed, s, over, paths(root, s, over, cfg)


def report_inputs(root: Path, cfg: C.Config, plan: Plan) -> list[Path]:
    return [f for *_, p in runs(root, cfg, plan) for f in (p.metrics, p.train_log)]


def write(root: Path, cfg: C.Config, plan: Plan) -> Path:
    """Check the request, then write ablations/dvc.yaml (atomically) and return its path."""
    from rpo.subjects import check_name, load_subject

    root = Path(root)
    for s in plan.subjects:
        check_name(s)
    outside = [s for s in plan.subjects if s not in cfg.subjects]
    if outside:
        raise P.ParamsError(f"subjects {outside} are not in params.yaml `subjects`: the ablations reuse their main pipeline")
    for s in plan.subjects:
        load_subject(root / cfg.paths.subjects, s, check_images=False)
    header = ("# Written by `rpo ablate` from the stages' specs and params.yaml (ablate.*); edit those, not this file.\n"
              f"# {', '.join(plan.tables)}; {len(plan.subjects)} subjects x seeds {plan.seeds}; see rpo/ablation.py.\n")
    path = root / ABLATIONS / "dvc.yaml"
    A.write_json(plan.to_json(), root / PLAN)
    with A.atomic_file(path) as tmp:
        tmp.write_text(header + P.yaml_dump(pipeline(root, cfg, plan)))
    return path


def run(root: Path, cfg: C.Config, plan: Plan, env: dict | None = None) -> int:
    """`dvc repro ablations/dvc.yaml`: reproduces the main stages it needs, then every row; DVC's exit code."""
    path = write(root, cfg, plan)
    cmd = [sys.executable, "-m", "dvc", "repro", path.relative_to(Path(root)).as_posix()]
    return subprocess.run(cmd, cwd=root, env=env).returncode


# --- the report ---------------------------------------------------------------------------


def results(root: Path, cfg: C.Config, plan: Plan) -> pd.DataFrame:
    """One record per (row, subject, seed): the selected step, every metric, the training's diagnostics."""
    out = []
    for row, seed, s, over, p in runs(root, cfg, plan):
        metrics = A.read_json(p.metrics)
        steps = pd.read_csv(p.train_log) if p.train_log.exists() else pd.DataFrame()
        diag = steps[[c for c in DIAGNOSTICS if c in steps]].mean().to_dict()  # RPO's terms: baselines have none
        out.append({"row": row.label, "subject": s, "seed": seed, "variant": stages.slug(over) or "main",
                    **metrics, **{f"train_{k}": v for k, v in diag.items()}})
    return pd.DataFrame(out)


def columns(df: pd.DataFrame) -> list[str]:
    """The metrics to show: DreamBench's, then whatever else every run recorded (a judge's rates)."""
    skip = {"seed", "selected_step", "lambda_val", "n_prompts", "images_per_prompt", "n_references"}
    extra = sorted(c for c in df.columns if c not in skip and c not in METRICS and not c.startswith(("base_", "train_"))
                   and pd.api.types.is_numeric_dtype(df[c]))
    return list(METRICS) + extra


def summarise(df: pd.DataFrame, plan: Plan, params: dict) -> dict:
    """Per table and row: mean and 95% interval of every metric; in a table that holds the main row (is_main of
    `params`, the main pipeline's), each other row also gets "minus_main", its paired differences."""
    cols = columns(df)
    out = {}
    for title, rows in plan.tables.items():
        out[title] = []
        paired = minus_main(df, rows, params, cols)
        for row in rows:
            g = df[df["row"] == row.label]
            out[title].append({"row": row.label, "settings": row.settings(), "runs": len(g),
                               "selected_step": stats(g["selected_step"]),
                               **{c: stats(g[c]) for c in cols},
                               **{k: float(g[f"train_{k}"].mean()) for k in DIAGNOSTICS
                                  if f"train_{k}" in g and g[f"train_{k}"].notna().any()},
                               **({"minus_main": paired[row.label]} if row.label in paired else {})})
    base = df[df["row"] == plan.base.label]
    out["base model"] = [{"row": "base model (no fine-tuning)", "runs": len(base),
                          **{c: stats(base[f"base_{c}"]) for c in cols if f"base_{c}" in base}}]
    return out


def minus_main(df: pd.DataFrame, rows: list[Row], params: dict, cols: list[str]) -> dict[str, dict]:
    """{row label: {metric: stats of (row - main row)}} over the (subject, seed) runs both have.

    Pairing removes what a subject and a seed share (the prior images, the labels' draws, the evaluation
    seeds), so two rows that overlap in their own intervals can still differ beyond the paired one.
    """
    ref = next((r for r in rows if is_main(r.settings(), params)), None)
    if ref is None:
        return {}
    key = ["subject", "seed"]
    base = df[df["row"] == ref.label].set_index(key)
    out = {}
    for row in rows:
        if row.label == ref.label:
            continue
        own = df[df["row"] == row.label].set_index(key)
        both = own.index.intersection(base.index)
        out[row.label] = {c: stats(own.loc[both, c] - base.loc[both, c]) for c in cols}
    return out


def signed(stat: dict) -> str:
    """`+mean ± 95% half-width`, in bold when the interval excludes 0."""
    if stat.get("mean") is None:
        return "n/a"
    text = f"{stat['mean']:+.3f} ± {stat['ci95']:.3f}"
    return f"**{text}**" if stat["n"] > 1 and abs(stat["mean"]) > stat["ci95"] else text


def markdown(summary: dict, df: pd.DataFrame, plan: Plan, cfg: C.Config) -> str:
    cols = columns(df)
    lines = [f"# Ablations: {len(plan.subjects)} subject(s) x {len(plan.seeds)} seed(s)", "",
             f"Subjects: {', '.join(plan.subjects)}; seeds {', '.join(map(str, plan.seeds))}. Each cell: mean ± 95% "
             "interval of the mean over (subject, seed) runs (Student's t); n = runs. r_λ is the reward at the row's "
             "lambda_val. Rows marked * are the main pipeline's own result.", ""]
    params = C.to_dict(cfg)
    for title, rows in summary.items():
        lines += [f"## {title}", ""]
        header = ["row", "n", "selected step", *cols]
        out_rows = []
        for r in rows:
            star = "*" if "settings" in r and is_main(r["settings"], params) else ""
            out_rows.append([r["row"] + star, r["runs"], cell(r.get("selected_step"), 1, "ci95"),
                             *(cell(r.get(c), 3, "ci95") for c in cols)])
        lines += table(header, out_rows) + [""]
        paired = [r for r in rows if "minus_main" in r]
        if paired:
            lines += ["Paired differences, row minus the main row (*) on the same subject and seed (n: pairs): "
                      "mean ± 95% interval; bold where the interval excludes 0.", "",
                      *table(["row", "n", *cols], [[r["row"], r["minus_main"][cols[0]]["n"],
                                                   *(signed(r["minus_main"][c]) for c in cols)] for r in paired]), ""]
        if title.startswith("Table 3"):
            published = [[p.method, cell(p.dino), cell(p.clip_i), cell(p.clip_t)] for p in PUBLISHED if p.lambda_val]
            lines += ["Published (" + PUBLISHED[0].source + "; " + PUBLISHED[0].models + "):", "",
                      *table(["row", "DINO", "CLIP-I", "CLIP-T"], published), ""]
    trained = [r for rows in summary.values() for r in rows if "delta_abs" in r]
    if trained:
        lines += ["## The preference term during training (mean over steps and runs)", "",
                  "label mean: fraction of pairs labelled y = 1 (the reference preferred to the base model's image).", "",
                  *table(["row", "mean abs Delta", "mean abs(P - 0.5)", "label mean", "L_pref"],
                         [[r["row"], f"{r['delta_abs']:.2e}", f"{r['p_dev']:.4f}", f"{r['label_mean']:.3f}",
                           f"{r['l_pref']:.4f}"] for r in dict((r["row"], r) for r in trained).values()]), ""]
    return "\n".join(lines)


def report(root: Path, cfg: C.Config, plan: Plan, out: Path | None = None) -> Path:
    """reports/ablations.md and .json (or `out`.md / .json) over every (row, subject, seed) of the plan."""
    root = Path(root)
    df = results(root, cfg, plan)
    summary = summarise(df, plan, C.to_dict(cfg))
    out = out or root / "reports" / "ablations"
    A.write_json({"subjects": plan.subjects, "seeds": plan.seeds, "tables": summary, "runs": records(df)},
                 out.with_suffix(".json"))
    with A.atomic_file(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(summary, df, plan, cfg))
    log.info("ablations: %s over %d subjects x %d seeds -> %s", ", ".join(plan.tables), len(plan.subjects),
             len(plan.seeds), out.with_suffix(".md"))
    return out.with_suffix(".md")


def cli(args) -> int:
    cfg = P.config_from_args(args)
    root = Path.cwd()
    if args.report and not args.subjects and (root / PLAN).exists():
        print(report(root, cfg, Plan.from_json(A.read_json(root / PLAN))))
        return 0
    chosen = () if args.baselines is None else tuple(args.baselines) or C.BASELINE_METHODS  # bare --baselines: all
    plan = paper_plan(cfg, list(args.subjects or cfg.subjects), args.tables, chosen)
    if args.report:
        print(report(root, cfg, plan))
        return 0
    if args.dry_run:
        print(write(root, cfg, plan))
        return 0
    code = run(root, cfg, plan)
    if code:
        raise A.ArtifactError(f"dvc repro {ABLATIONS}/dvc.yaml failed (exit {code}); see DVC's message above")
    print("reports/ablations.md")
    return 0
