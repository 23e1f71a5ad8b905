"""`rpo`: subject-driven fine-tuning of Stable Diffusion with RPO, as a DVC pipeline.

Each subcommand's handler is named here as a string and imported only when it runs, so a stage's
command imports its own module and nothing else of the project (rpo.deps reads those imports
for dvc.yaml).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from rpo.allocator import keep_freed_memory

EPILOG = """examples:
  rpo check                                  validate params.yaml and every subject, no model loaded
  rpo stage finetune --subject dog           one stage for one subject (what `dvc repro finetune@dog` runs)
  rpo --set train.max_steps=100 run --subject dog   every stage for one subject, no DVC cache
  rpo subjects add my_dog --images ~/photos/dog --class-noun dog --live
  rpo export --subject dog --out exports/dog  the fine-tuned model as a diffusers folder (+ LoRA for A1111/ComfyUI)
  rpo sample --subject dog --prompt "a {V} {k} on the beach" -n 4    images of the subject, with a grid
  rpo preset paper                           switch params.yaml to the paper's settings (SD 2.1, ALIGN, 512 px)
  rpo preset paper-sdxl                      the same method on Stable Diffusion XL (LoRA, 1024 px)
  rpo ablate dog --tables 3                  the paper's lambda_val ablation for one subject
  rpo ablate --tables 2 --baselines          RPO's terms, and DreamBooth, Textual Inversion, Custom Diffusion beside it
  rpo dvc sync                               rewrite dvc.yaml's stages from the code (dependencies, params, outputs)

`dvc repro` runs the whole pipeline for every subject of params.yaml."""


def _stage_lines() -> str:
    from rpo.stages import SUMMARIES

    return "\n".join(f"  {name:<9} {text}" for name, text in SUMMARIES.items())


def build_parser() -> argparse.ArgumentParser:
    from rpo.config import BASELINE_METHODS
    from rpo.images import DEFAULT_MAX_SIZE
    from rpo.stages import STAGES

    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="rpo", description=__doc__.split("\n")[0], epilog=EPILOG, formatter_class=fmt)
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a parameter for this command, e.g. --set train.max_steps=100 (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, handler, help, epilog=None):
        p = sub.add_parser(name, help=help, description=help, epilog=epilog, formatter_class=fmt)
        p.set_defaults(handler=handler)
        return p

    p = command("stage", "rpo.stages:cli_stage", "run one stage (for one subject)",
                "stages, in order:\n" + _stage_lines() + "\n\nexample: rpo stage prior --subject dog")
    p.add_argument("name", choices=STAGES, metavar="STAGE", help="one of: " + ", ".join(STAGES))
    p.add_argument("--subject", help="the subject (every stage but check and report)")
    p.add_argument("--ablation", action="store_true",
                   help="outputs under ablations/<overrides> for the --set overrides (rpo ablate writes these commands)")

    p = command("run", "rpo.stages:cli_run", "run every stage for one subject, in this process, without DVC's cache",
                "example: rpo --set train.max_steps=100 run --subject dog")
    p.add_argument("--subject", required=True, help="the subject, a folder of paths.subjects")

    command("check", "rpo.checkup:cli", "validate params.yaml and every listed subject, loading no model",
            "example: rpo check")

    p = command("report", "rpo.stages.report:cli", "the DreamBench report over the subjects of params.yaml",
                "writes reports/summary.md, summary.json, figures/, curves/, timings.md\nexample: rpo report")

    p = command("export", "rpo.export:cli", "write the subject's fine-tuned model as a diffusers folder (+ LoRA files)",
                "loads with plain DiffusionPipeline.from_pretrained(DIR); a LoRA run also writes DIR/lora/ (diffusers)\n"
                "and DIR/lora/<subject>_kohya.safetensors (AUTOMATIC1111, ComfyUI, kohya)\n"
                "example: rpo export --subject dog --out exports/dog")
    p.add_argument("--subject", required=True, help="the subject whose selected model to export")
    p.add_argument("--out", required=True, help="the folder to write (refused if it exists, unless --overwrite)")
    p.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"), help="weights' precision (default fp16)")
    p.add_argument("--step", type=int, help="export the checkpoint of this validation step instead of the selected one")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")

    p = command("sample", "rpo.sample:cli", "draw images of the fine-tuned subject for a prompt, with a grid",
                "placeholders: {V} = the unique token, {k} = the class noun\n"
                'example: rpo sample --subject dog --prompt "a {V} {k} on the beach" -n 4 --seed 0')
    p.add_argument("--prompt", required=True, help='the prompt, e.g. "a {V} {k} on the beach" or "a sks dog in the snow"')
    p.add_argument("--subject", help="the subject whose selected model draws (its token and class fill the placeholders)")
    p.add_argument("-n", type=int, default=4, help="how many images (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i (default 0)")
    p.add_argument("--steps", type=int, help="sampler steps (default: evaluate.num_inference_steps)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance (default: evaluate.guidance_scale)")
    p.add_argument("--batch-size", type=int, default=8, help="images per pipeline call (default 8)")
    p.add_argument("--out", help="folder for the images and grid.png (default: samples/<subject>/<prompt>/)")
    p.add_argument("--step", type=int, help="use the checkpoint of this validation step instead of the selected one")
    p.add_argument("--model", help="an exported folder (rpo export) instead of the subject's selected model")

    p = command("ablate", "rpo.ablation:cli", "the paper's ablations (Tables 2 and 3): ablations/dvc.yaml, then dvc repro",
                "example: rpo ablate dog --tables 3")
    p.add_argument("subjects", nargs="*", help="subjects (default: every one in params.yaml `subjects`)")
    p.add_argument("--tables", type=int, nargs="+", choices=(2, 3), default=[2, 3],
                   help="2: the terms of RPO (L_pref, early stopping); 3: lambda_val of selection")
    p.add_argument("--baselines", nargs="*", choices=BASELINE_METHODS,
                   metavar="METHOD", help="add the paper's baselines beside full RPO (no METHOD: all of dreambooth, "
                   "textual_inversion, custom_diffusion), each at its last step and with early stopping")
    p.add_argument("--dry-run", action="store_true", help="only write ablations/dvc.yaml")
    p.add_argument("--report", action="store_true",
                   help="only the report of finished ablations (reports/ablations.md; the plan of ablations/plan.json)")

    p = command("preset", "rpo.presets:cli", "switch params.yaml to a preset, keeping its comments and your subjects",
                "presets: paper (SD 2.1, ALIGN, 512 px, 400 steps; a GPU), paper-sdxl (SDXL with LoRA as the official "
                "train_sdxl.py, 1024 px; a GPU), world (the bundled world, CPU), tiny and tiny-sdxl (random tiny "
                "models)\nexample: rpo preset paper-sdxl")
    p.add_argument("name", help="paper, paper-sdxl, world, tiny or tiny-sdxl (rpo/presets/*.yaml)")

    subjects = command("subjects", None, "add and list subjects").add_subparsers(dest="subcommand", required=True,
                                                                                metavar="SUBCOMMAND")
    p = subjects.add_parser("add", help="check photos and copy them into data/subjects/NAME",
                            description="check every photo, then write upright RGB PNGs and subject.yaml",
                            epilog="example: rpo subjects add my_dog --images ~/photos/dog --class-noun dog --live")
    p.set_defaults(handler="rpo.importer:cli_add")
    p.add_argument("name", help="the subject's name: letters, digits, '_' and '-'")
    p.add_argument("--images", required=True, help="folder with the photos (3 to 6 in the paper)")
    p.add_argument("--class-noun", required=True, help="what the subject is: dog, backpack, toy, ...")
    p.add_argument("--live", action="store_true", help="a live subject (pet): the paper's live prompt lists")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                   help=f"scale photos down to this short side in px, never below model.resolution ({DEFAULT_MAX_SIZE})")
    p.add_argument("--overwrite", action="store_true", help="replace a subject of that name")
    p = subjects.add_parser("add-dreambench", help="import DreamBench subjects (all 30, or NAMES) with class nouns",
                            description="import DreamBench subjects with their class nouns and credits",
                            epilog="example: rpo subjects add-dreambench dog can teapot")
    p.set_defaults(handler="rpo.importer:cli_add_dreambench")
    p.add_argument("names", nargs="*", help="DreamBench subjects, e.g. dog backpack (default: all 30)")
    p.add_argument("--dataset", help="DreamBench `dataset` folder (default: params.yaml paths.dreambench)")
    p.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                   help=f"bound on the photos' short side in px, not below model.resolution ({DEFAULT_MAX_SIZE})")
    p.add_argument("--overwrite", action="store_true", help="replace subjects that already exist")
    p = subjects.add_parser("list", help="list subject folders (* = in params.yaml)", description="list subject folders")
    p.set_defaults(handler="rpo.importer:cli_list")

    dvc = command("dvc", None, "keep dvc.yaml true to the code").add_subparsers(dest="subcommand", required=True,
                                                                                metavar="SUBCOMMAND")
    p = dvc.add_parser("sync", help="rewrite the stages of dvc.yaml: dependencies from the code's imports",
                       description="each stage's deps: its data, the project files its command imports, model folders",
                       epilog="example: rpo dvc sync --check")
    p.set_defaults(handler="rpo.deps:cli")
    p.add_argument("--check", action="store_true", help="only say whether dvc.yaml is up to date (exit 1 if not)")
    return parser


def quiet_libraries() -> None:
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


# a user's mistake (params, a subject, a photo, an artifact): one line and exit code 2, never a traceback
USER_ERRORS = ("rpo.params:ParamsError", "rpo.subjects:SubjectError", "rpo.images:ImageError",
               "rpo.artifacts:ArtifactError")


def _load(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_libraries()
    keep_freed_memory()
    from rpo.artifacts import project_root, remove_stale_temporaries

    root = project_root(Path.cwd() / args.params)
    if root is not None:
        remove_stale_temporaries(root)  # what killed commands left behind: never read, never listed
    errors = tuple(_load(e) for e in USER_ERRORS)
    try:
        return _load(args.handler)(args) or 0
    except errors as e:
        print(f"rpo: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
