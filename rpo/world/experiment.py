"""RPO measured in the world: `python -m rpo.world.experiment` (one command, Markdown + JSON report).

On every world subject and seed, with the product's own stage functions: the base model, and
pure L_sim (beta = 0) and RPO at each beta, each without early stopping (last step) and with
lambda-Harmonic early stopping at each lambda_val. One training run per (subject, beta, seed)
serves every selection rule, since selection only re-reads the recorded validation scores
(DESIGN.md section 1). Evaluation prompts are DreamBench's, none of which is a training
prompt. Each arm is scored by the judges (subject fidelity, prompt faithfulness) and by the
DreamBench metric analogues; the report gives the mean and spread over subjects and seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import pandas as pd

from rpo import params as P
from rpo import presets
from rpo.artifacts import atomic_file, write_json
from rpo.world.subjects import SUBJECTS, write_subject

log = logging.getLogger("rpo.world")
REPO = Path(__file__).resolve().parents[2]
METRICS = ("judge_subject", "judge_prompt", "judge_both", "judge_mark", "judge_context", "judge_home",
           "dino", "clip_i", "clip_t", "align_i", "align_t")
# a full experiment: the paper's 400 steps, validated every 40; --quick shrinks every count for the test suite
FULL = {"prior.images_per_prompt": 4, "train.max_steps": 400, "validate.every": 40, "evaluate.images_per_prompt": 2}
QUICK = {"prior.images_per_prompt": 1, "prior.num_inference_steps": 2, "train.max_steps": 2, "validate.every": 2,
         "validate.images_per_prompt": 1, "validate.num_inference_steps": 2, "evaluate.images_per_prompt": 1,
         "evaluate.num_inference_steps": 2}


def arms(lambdas: list[float], betas: list[float]) -> list[dict]:
    """(name, beta, early stopping, lambda_val) of every compared model except the base.

    beta = 0 (pure L_sim) runs with and without early stopping too, so the table separates what
    the preference term does from what early stopping does (the paper's Table 2 ablation).
    """
    out = []
    for beta in [0.0, *betas]:
        tag = "L_sim (beta=0)" if beta == 0 else f"RPO beta={beta:g}"
        out.append({"arm": f"{tag}, no early stopping", "beta": beta, "early_stopping": False, "lambda_val": lambdas[0]})
        out += [{"arm": f"{tag}, early stopping lambda_val={lam:g}", "beta": beta, "early_stopping": True,
                 "lambda_val": lam} for lam in lambdas]
    return out


def _project(root: Path, subject) -> None:
    """A scratch project with the subject's folder, as a user's checkout has it."""
    write_subject(subject, root / "data" / "subjects" / subject.name)


def run_subject(root: Path, base_params: dict, subject, seed: int, arm_list: list[dict]) -> list[dict]:
    """Every arm for one (subject, seed); one training run per beta, one evaluation per selected step."""
    from rpo import stages

    _project(root, subject)
    params = P.apply_overrides(base_params, {"seed": seed, "subjects": [subject.name]})
    ctx = stages.context(root, params, subject.name)
    for name in ("prior", "score", "labels"):
        stages.STAGE_FUNCTIONS[name](ctx)
    rows, evaluated = [], {}
    for beta in sorted({a["beta"] for a in arm_list}):
        ctx = stages.context(root, P.apply_overrides(params, {"train.beta": beta}), subject.name)
        stages.finetune(ctx)
        train_log = pd.read_csv(ctx.paths.train_log)
        for arm in (a for a in arm_list if a["beta"] == beta):
            over = {"train.beta": beta, "validate.early_stopping": arm["early_stopping"],
                    "validate.lambda_val": arm["lambda_val"], "evaluate.base_images": not rows}
            ctx = stages.context(root, P.apply_overrides(params, over), subject.name)
            step = json.loads(stages.select(ctx).read_text())["step"]
            key = (beta, step)
            if key not in evaluated:
                evaluated[key] = json.loads(stages.evaluate(ctx).read_text())
                if not rows:
                    rows.append(_row(subject, seed, "base", evaluated[key]["base"], 0, train_log=None))
            rows.append(_row(subject, seed, arm["arm"], evaluated[key], step, train_log))
    return rows


def _finished(root: Path, base: dict, arm_list: list[dict]) -> list[dict] | None:
    """The rows of a run already finished with these arms and parameters, else None."""
    done = root / "rows.json"
    if not done.exists():
        return None
    stored = json.loads(done.read_text())
    same = stored["arms"] == arm_list and _run_params(stored["params"]) == _run_params(base)
    return stored["rows"] if same else None


def _run_once(root: Path, base: dict, subject, seed: int, arm_list: list[dict]) -> list[dict]:
    """A finished run's rows are reused, so an interrupted experiment resumes where it stopped."""
    rows = _finished(root, base, arm_list)
    if rows is not None:
        return rows
    shutil.rmtree(root, ignore_errors=True)
    log.info("== %s, seed %d ==", subject.name, seed)
    rows = run_subject(root, base, subject, seed, arm_list)
    write_json({"arms": arm_list, "params": _run_params(base), "rows": rows}, root / "rows.json")
    return rows


def _run_params(params: dict) -> dict:
    """The parameters that make a run: not params.yaml's subject list (each run names its subject),
    nor the keys every arm sets for itself."""
    out = json.loads(json.dumps(params))
    out.pop("subjects", None)
    out.get("train", {}).pop("beta", None)
    for key in ("early_stopping", "lambda_val"):
        out.get("validate", {}).pop(key, None)
    return out


def _row(subject, seed: int, arm: str, metrics: dict, step: int, train_log) -> dict:
    row = {"subject": subject.name, "live": subject.noun == "pet", "seed": seed, "arm": arm, "step": step,
           **{m: metrics.get(m) for m in METRICS}}
    if train_log is not None:  # is the preference term doing anything? (DESIGN.md: it may sit at ln 2)
        row.update({k: float(train_log[k].mean()) for k in ("delta_abs", "p_dev", "label_mean", "l_pref")})
    return row


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation of every metric per arm, over subjects and seeds."""
    cols = [m for m in METRICS if df[m].notna().any()]
    g = df.groupby("arm", sort=False)[cols]
    std = g.std(ddof=0).add_suffix("_std")
    return g.mean().join(std).assign(runs=g.size())


def markdown(df: pd.DataFrame, summary: pd.DataFrame, settings: dict) -> str:
    cols = [m for m in METRICS if m in summary]
    lines = ["# RPO in the world", "", f"{df['subject'].nunique()} subjects x {df['seed'].nunique()} seeds; "
             "mean ± std over (subject, seed) runs. judge_* are fractions of evaluation images "
             "(subject: the subject's identity is drawn; prompt: every drawable thing the prompt asks is there; "
             "both: the two at once; home: the references' background appears instead of the prompted one).", "",
             "| arm | runs | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for arm, r in summary.iterrows():
        lines.append(f"| {arm} | {int(r['runs'])} | " + " | ".join(_fmt(r[c], r[f'{c}_std']) for c in cols) + " |")
    lines += ["", "## Per subject (mean over seeds)", "", "| subject | arm | step | judge_subject | judge_prompt | "
              "judge_both | dino | clip_i | clip_t |", "|---|---|---|---|---|---|---|---|---|"]
    per = df.groupby(["subject", "arm"], sort=False)[["step", "judge_subject", "judge_prompt", "judge_both", "dino",
                                                      "clip_i", "clip_t"]].mean()
    for (subject, arm), r in per.iterrows():
        lines.append(f"| {subject} | {arm} | {r['step']:.0f} | " + " | ".join(_fmt(r[c]) for c in per.columns[1:]) + " |")
    if "label_mean" in df:
        pref = df[df["delta_abs"].notna()].groupby("arm", sort=False)[["delta_abs", "p_dev", "label_mean", "l_pref"]].mean()
        lines += ["", "## The preference term during training (mean over steps and runs)", "",
                  "label mean: fraction of pairs labelled y = 1 (the reference preferred to the base model's image).", "",
                  "| arm | mean abs Delta | mean abs(P - 0.5) | label mean | L_pref |", "|---|---|---|---|---|"]
        lines += [f"| {arm} | {r['delta_abs']:.2e} | {r['p_dev']:.4f} | {r['label_mean']:.3f} | {r['l_pref']:.4f} |"
                  for arm, r in pref.iterrows()]
    lines += ["", "## Settings", "", "```json", json.dumps(settings, indent=1, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def _fmt(mean, std=None) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    return f"{mean:.3f}" if std is None or pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def experiment(out: Path, subjects: list[str], seeds: list[int], lambdas: list[float], betas: list[float],
               quick: bool = False, overrides: dict | None = None) -> Path:
    base = P.apply_overrides(P.load(REPO / "params.yaml"), {**presets.load("world"), **(QUICK if quick else FULL),
                                                            **(overrides or {})})
    arm_list = arms(lambdas, betas)
    chosen = [s for s in SUBJECTS if s.name in subjects]
    rows, start = [], time.perf_counter()
    for seed in seeds:  # every subject once before any twice: an interrupted experiment still spans subjects
        for subject in chosen:
            rows += _run_once(out / "runs" / f"{subject.name}_seed{seed}", base, subject, seed, arm_list)
    # Several processes may share `out`, each running some subjects: each report also takes in the
    # other subjects' finished runs, so the last process to finish reports on all of them.
    for seed in seeds:
        for subject in (s for s in SUBJECTS if s not in chosen):
            rows += _finished(out / "runs" / f"{subject.name}_seed{seed}", base, arm_list) or []
    df = pd.DataFrame(rows)
    summary = summarise(df)
    settings = {"subjects": sorted(map(str, df["subject"].unique())), "seeds": seeds, "lambdas": lambdas, "betas": betas,
                "quick": quick, "params": base, "seconds": round(time.perf_counter() - start)}
    write_json({"runs": df.to_dict(orient="records"), "summary": summary.reset_index().to_dict(orient="records"),
                "settings": settings}, out / "experiment.json")
    with atomic_file(out / "experiment.md") as tmp:
        tmp.write_text(markdown(df, summary, settings))
    return out / "experiment.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rpo.world.experiment", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("reports/world_experiment"))
    parser.add_argument("--subjects", nargs="+", default=[s.name for s in SUBJECTS])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--betas", nargs="+", type=float, default=[1.0], help="RPO's beta values (beta = 0 always runs)")
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the machinery in a minute")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (on a shared CPU, more threads are slower)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from rpo.cli import _quiet_libraries

    _quiet_libraries()
    args.out.mkdir(parents=True, exist_ok=True)
    path = experiment(args.out.resolve(), args.subjects, args.seeds, args.lambdas, args.betas, args.quick,
                      dict(P.parse_override(o) for o in args.set))
    print(path.read_text())


if __name__ == "__main__":
    main()
