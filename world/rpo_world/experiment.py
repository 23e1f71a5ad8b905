"""RPO and the paper's baselines measured in the world: `rpo-world experiment` (rpo ablate's engine and report).

On every world subject and seed, each method of `--methods`: pure L_sim (beta = 0), RPO at each beta,
DreamBooth with prior preservation, Textual Inversion and Custom Diffusion (`train.method`), each without
early stopping (last step) and with lambda-Harmonic early stopping at each lambda_val, plus the base
model. One training run per (subject, method, seed) serves every selection rule, since selection
only re-reads the recorded validation scores (DESIGN.md section 1). Evaluation prompts are
DreamBench's, none of which is a training prompt. Each row is scored by the world's judges
(subject fidelity, prompt faithfulness) and the DreamBench metric analogues.

It runs in a copy of this project under `--out` (its tracked files, hard-linked) with the world
preset and the world's subjects: `dvc repro` there does the work, so a stopped experiment
resumes where it stopped and a finished one is never recomputed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from rpo import ablation
from rpo import params as P
from rpo import presets
from rpo.artifacts import ArtifactError, atomic_file
from rpo_world.subjects import SUBJECTS

# a full experiment: the paper's 400 steps, validated every 40; --quick shrinks every count for the test suite
# (its base-model row is evaluated once per subject and seed, so no run validates step 0)
FULL = {"prior.images_per_prompt": 4, "train.max_steps": 400, "validate.every": 40, "validate.at_start": False,
        "evaluate.images_per_prompt": 2}
QUICK = {"prior.images_per_prompt": 1, "prior.num_inference_steps": 2, "prior.class_images": 2,
         "train.max_steps": 2, "validate.every": 2, "validate.at_start": False,
         "validate.images_per_prompt": 1, "validate.num_inference_steps": 2, "evaluate.images_per_prompt": 1,
         "evaluate.num_inference_steps": 2}
TITLE = "RPO, its ablations and the baselines in the world"


# `--methods`: lsim is RPO at beta 0 (pure L_sim); the baselines are train.method values (rpo.methods)
METHODS = ("lsim", "rpo", "dreambooth", "textual_inversion", "custom_diffusion")
BASELINES = {"dreambooth": "DreamBooth (prior preservation)", "textual_inversion": "Textual Inversion",
             "custom_diffusion": "Custom Diffusion"}


def trainings(methods: list[str], betas: list[float]) -> list[tuple[str, tuple]]:
    """(label, training overrides) of every training run a plan of `methods` needs, in METHODS' order."""
    out = []
    for m in (m for m in METHODS if m in methods):
        if m == "lsim":
            out.append(("L_sim (beta=0)", (("train.beta", 0.0), ("train.method", "rpo"))))
        elif m == "rpo":
            out += [(f"RPO beta={b:g}", (("train.beta", float(b)), ("train.method", "rpo"))) for b in betas]
        else:
            out.append((BASELINES[m], (("train.method", m),)))
    return out


def rows(lambdas: list[float], betas: list[float], methods: list[str] = ("lsim", "rpo")) -> list[ablation.Row]:
    """Every compared model but the base: each training run, at its last step and with each early stopping."""
    out = []
    for tag, training in trainings(list(methods), betas):
        out.append(ablation.Row(f"{tag}, no early stopping", training, False, lambdas[0]))
        out += [ablation.Row(f"{tag}, early stopping lambda_val={lam:g}", training, True, lam) for lam in lambdas]
    return out


def project_files(repo: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (repo / f).is_file()]


def prepare(repo: Path, project: Path, params: dict) -> None:
    """A copy of the project (hard links: nothing is written through them) with the experiment's params.yaml."""
    if not (project / ".dvc").is_dir():
        for rel in project_files(repo):
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(repo / rel, project / rel)
            except OSError:
                shutil.copy2(repo / rel, project / rel)
        (project / "params.yaml").unlink()  # a link to the checkout's: replaced, never written through
        subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "core.no_scm", "true"], cwd=project,
                       check=True, capture_output=True)
    with atomic_file(project / "params.yaml") as tmp:
        tmp.write_text(P.yaml_dump(params))


def experiment(repo: Path, out: Path, subjects: list[str], seeds: list[int], lambdas: list[float],
               betas: list[float], quick: bool = False, overrides: dict | None = None, threads: int = 1,
               methods: list[str] = METHODS) -> Path:
    project = out / "project"
    params = P.apply_overrides(P.read(repo / "params.yaml"), {
        **presets.load("world"), **(QUICK if quick else FULL), **(overrides or {}),
        "subjects": list(subjects), "seed": seeds[0], "ablate.seeds": list(seeds)})
    P.validate(params, "the experiment's parameters")
    prepare(repo, project, params)
    cfg = P.load_config(project / "params.yaml")
    plan = ablation.Plan({TITLE: rows(lambdas, betas, methods)}, list(seeds), list(subjects))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads),  # stage processes: as many threads as asked, no more
           "PYTHONPATH": os.pathsep.join([str(project), str(project / "world")])}  # the copy's code runs
    code = ablation.run(project, cfg, plan, env=env)
    if code:
        raise ArtifactError(f"{project}: dvc repro ablations/dvc.yaml failed (exit {code}); see DVC's message above")
    return ablation.report(project, cfg, plan, out / "experiment")


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, default=Path("reports/world_experiment"),
                        help="folder of the experiment's project copy and its report (default: reports/world_experiment)")
    parser.add_argument("--subjects", nargs="+", default=[s.name for s in SUBJECTS], help="world subjects (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--lambdas", nargs="+", type=float, default=[0.3, 0.5, 0.7], help="lambda_val of selection")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                        help=f"methods compared (default: all of {', '.join(METHODS)}; lsim is RPO at beta 0)")
    parser.add_argument("--betas", nargs="+", type=float, default=[1.0, 0.1],
                        help="RPO's beta values (default: 1, the paper's, and 0.1, the world preset's)")
    parser.add_argument("--quick", action="store_true", help="tiny counts: checks the machinery in minutes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a parameter")


def cli(args) -> int:
    unknown = [s for s in args.subjects if s not in {w.name for w in SUBJECTS}]
    if unknown:
        raise SystemExit(f"rpo-world: error: not world subjects: {', '.join(unknown)}")
    repo = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                               check=True).stdout.strip())
    path = experiment(repo, args.out.resolve(), args.subjects, args.seeds, args.lambdas, args.betas, args.quick,
                      dict(P.parse_override(o) for o in args.set), args.threads, args.methods)
    print(path.read_text())
    return 0
