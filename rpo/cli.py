"""`rpo`: run one stage for one subject, the whole pipeline, manage subjects, write the report."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from rpo import params as P

log = logging.getLogger("rpo")


def _load_params(args) -> dict:
    overrides = dict(P.parse_override(o) for o in args.set or [])
    return P.load(args.params, overrides)


def _checked_context(args):
    """Params and the subject's photos are checked here, before torch or any model is imported."""
    from rpo.context import context

    params = _load_params(args)
    if getattr(args, "variant", None):
        from rpo import ablation

        ctx = ablation.context(Path.cwd(), params, args.subject, args.variant, args.name)
    else:
        ctx = context(Path.cwd(), params, args.subject)
    _quiet_libraries()
    return ctx


def cmd_stage(args) -> None:
    ctx = _checked_context(args)
    from rpo import stages

    stages.STAGE_FUNCTIONS[args.name](ctx)


def cmd_run(args) -> None:
    """All stages for one subject, in order, without DVC (use `dvc repro` to get caching)."""
    ctx = _checked_context(args)
    from rpo import stages

    for name in stages.STAGES:
        log.info("== stage %s for %s ==", name, args.subject)
        stages.STAGE_FUNCTIONS[name](ctx)


def cmd_report(args) -> None:
    from rpo import report

    params = _load_params(args)
    if args.ablations:
        print(report.ablations(Path.cwd(), params, args.subjects or params["subjects"], args.tables))
    else:
        print(report.report(Path.cwd(), params))


def cmd_ablate(args) -> None:
    from rpo import ablation
    from rpo.artifacts import ArtifactError

    params = _load_params(args)
    subjects = args.subjects or params["subjects"]
    if args.dry_run:
        print(ablation.write(Path.cwd(), params, subjects, args.tables))
        return
    code = ablation.run(Path.cwd(), params, subjects, args.tables)
    if code:
        raise ArtifactError(f"dvc repro {ablation.ABLATIONS}/dvc.yaml failed (exit {code}); see DVC's message above")
    print("reports/ablations.md")


def cmd_check(args) -> None:
    """Validate params.yaml and every listed subject folder, loading no model."""
    from rpo.subjects import load_subject

    params = _load_params(args)
    for name in params["subjects"]:
        s = load_subject(Path(params["paths"]["subjects"]), name, params["model"]["resolution"])
        print(f"{name}: {len(s.images)} images, class noun {s.class_noun!r}, {'live' if s.live else 'object'}")


def cmd_subjects_add(args) -> None:
    from rpo.subjects import add_subject

    params = P.load(args.params)
    s = add_subject(Path(params["paths"]["subjects"]), args.name, Path(args.images), args.class_noun, args.live,
                    params["model"]["resolution"], args.overwrite)
    print(f"added {s.name}: {len(s.images)} images in {s.folder}; add it to `subjects` in {args.params} to run it")


def cmd_subjects_add_dreambench(args) -> None:
    from rpo import dreambench

    params = P.load(args.params)
    dataset = Path(args.dataset or params["paths"]["dreambench"])
    added = dreambench.add_subjects(dataset, Path(params["paths"]["subjects"]), args.names,
                                    params["model"]["resolution"], args.max_size, args.overwrite)
    names = args.names or list(dreambench.CATALOG)
    print(f"added {len(added)} DreamBench subjects from {dataset} ({len(names) - len(added)} already there)")
    missing = [n for n in names if n not in params["subjects"]]
    if missing:
        print(f"add them to `subjects` in {args.params} to run them: {', '.join(missing)}")


def cmd_subjects_list(args) -> None:
    from rpo.subjects import load_subject

    params = P.load(args.params)
    root = Path(params["paths"]["subjects"])
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        s = load_subject(root, folder.name, check_images=False)
        mark = "*" if s.name in params["subjects"] else " "
        print(f"{mark} {s.name:24s} {s.class_noun:16s} {'live' if s.live else 'object':6s} {len(s.images)} images")


def cmd_preset(args) -> None:
    from rpo import presets

    values = presets.apply(args.name, args.params)
    print(f"{args.params}: preset {args.name!r} set {len(values)} keys ({', '.join(values)})")


def build_parser() -> argparse.ArgumentParser:
    from rpo.ablation import TABLES
    from rpo.context import STAGES
    from rpo.dreambench import DEFAULT_MAX_SIZE

    parser = argparse.ArgumentParser(prog="rpo", description=__doc__)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a parameter, e.g. train.max_steps=10")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stage", help="run one stage for one subject")
    p.add_argument("name", choices=STAGES)
    p.add_argument("--subject", required=True)
    p.add_argument("--variant", help="an ablation's training run or row (rpo ablate writes these commands)")
    p.set_defaults(func=cmd_stage)

    p = sub.add_parser("run", help="run every stage for one subject (no DVC caching)")
    p.add_argument("--subject", required=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="DreamBench report over the subjects in params.yaml (or the ablations report)")
    p.add_argument("--ablations", action="store_true", help="the ablations report (`rpo ablate` runs it)")
    p.add_argument("--tables", type=int, nargs="+", choices=TABLES, default=list(TABLES),
                   help="with --ablations: tables 2 and/or 3")
    p.add_argument("--subjects", nargs="+", help="with --ablations: subjects (default: params.yaml `subjects`)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ablate", help="the paper's Tables 2 and 3: writes ablations/dvc.yaml, runs `dvc repro` on it")
    p.add_argument("subjects", nargs="*", help="subjects (default: every one in params.yaml `subjects`)")
    p.add_argument("--tables", type=int, nargs="+", choices=TABLES, default=list(TABLES),
                   help="2 (L_pref, early stopping), 3 (lambda_val)")
    p.add_argument("--dry-run", action="store_true", help="only write ablations/dvc.yaml")
    p.set_defaults(func=cmd_ablate)

    sub.add_parser("check", help="validate params.yaml and the subjects, without loading models").set_defaults(func=cmd_check)

    p = sub.add_parser("preset", help="switch params.yaml to a preset (paper: SD 2.1, ALIGN, 512 px, 400 steps)")
    p.add_argument("name", help="paper, tiny or world (rpo/presets/*.yaml)")
    p.set_defaults(func=cmd_preset)

    subjects = sub.add_parser("subjects", help="manage subjects").add_subparsers(dest="subcommand", required=True)
    p = subjects.add_parser("add", help="validate photos and copy them into data/subjects/NAME")
    p.add_argument("name")
    p.add_argument("--images", required=True, help="folder with 3 to 6 photos of the subject")
    p.add_argument("--class-noun", required=True, help="what the subject is: dog, backpack, toy, ...")
    p.add_argument("--live", action="store_true", help="a live subject (pet): uses the live prompt lists")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_subjects_add)
    p = subjects.add_parser("add-dreambench", help="import DreamBench subjects (all 30, or NAMES) with class nouns")
    p.add_argument("names", nargs="*", help="DreamBench subjects, e.g. dog backpack (default: all 30)")
    p.add_argument("--dataset", help="DreamBench `dataset` folder (default: params.yaml paths.dreambench)")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                   help=f"bound on the photos' short side in px, not below model.resolution ({DEFAULT_MAX_SIZE})")
    p.add_argument("--overwrite", action="store_true", help="replace subjects that already exist")
    p.set_defaults(func=cmd_subjects_add_dreambench)
    subjects.add_parser("list", help="list subject folders (* = in params.yaml)").set_defaults(func=cmd_subjects_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    from rpo.artifacts import ArtifactError
    from rpo.images import ImageError
    from rpo.subjects import SubjectError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        args.func(args)
    except (P.ParamsError, SubjectError, ImageError, ArtifactError) as e:
        print(f"rpo: error: {e}", file=sys.stderr)
        return 2
    return 0


def _quiet_libraries() -> None:
    """Library progress bars and load reports drown the stage's own progress; keep warnings.

    Environment variables, read when the libraries are imported: importing them here would
    cost the stages that never use them (labels, select) seconds of start-up.
    """
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow this one


if __name__ == "__main__":
    sys.exit(main())
