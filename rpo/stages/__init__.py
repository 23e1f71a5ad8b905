"""The pipeline's stages (DESIGN.md section 2), one module each, and what DVC must know of them.

Each stage module has `STAGE` (a `StageSpec`: the data it reads, the params it reads, what it
writes) and one entry point, `run(ctx)` (`run(root, cfg)` for the report over all subjects).
`rpo dvc sync` writes dvc.yaml from these specs and from each module's import closure
(rpo.deps), so what DVC tracks is what the code reads. Modules are imported by name here, so
that running one stage imports only its own module.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rpo import artifacts as A

log = logging.getLogger("rpo")

SUMMARIES = {
    "check": "params.yaml against the base model's family, every subject's folder and photos; no weights load",
    "prior": "the base model's images of the training prompts, and their manifest",
    "class_prior": "the base model's images of the class prompt, for prior preservation (dreambooth, custom_diffusion)",
    "score": "the reward model's ALIGN-I and ALIGN-T of the references and the prior images, to Parquet",
    "labels": "preference pairs with Bradley-Terry P(x_ref > x_gen | c) and seeded label draws",
    "finetune": "fine-tuning (RPO or a baseline, train.method) with periodic validation images, scores and checkpoints",
    "select": "the checkpoint with the best mean validation reward at lambda_val (or the last one)",
    "evaluate": "DreamBench metrics (DINO, CLIP-I, CLIP-T) and images of the selected and the base model",
    "report": "the DreamBench summary over all subjects: tables, image grids, validation curves",
}
STAGES = tuple(SUMMARIES)
SUBJECT_STAGES = STAGES[:-1]
ABLATIONS = "ablations"


@dataclass(frozen=True)
class StageSpec:
    """What a stage reads and writes, for DVC and for the ablation engine.

    `deps` and `outs` name properties of `rpo.artifacts.Paths` (rendered with the subject `${item}`)
    or are literal DVC paths (`${paths.subjects}/${item}`); `params` are keys or whole sections.
    """

    deps: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[tuple[str, str, str], ...] = ()  # (output, x, y)
    models: tuple[str, ...] = ()  # params keys naming the models the stage loads (their folders are deps if local)
    params_if: object = None  # cfg -> more params keys the stage reads with this config (e.g. a numeric validate.keep);
    # cfg None -> every key it may read

    def params_for(self, cfg) -> tuple[str, ...]:
        return self.params + (tuple(self.params_if(cfg)) if self.params_if else ())
    per_subject: bool = True


def module(name: str):
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r} ({', '.join(STAGES)})")
    return importlib.import_module(f"rpo.stages.{name}")


def spec(name: str) -> StageSpec:
    return module(name).STAGE


def reads(name: str, key: str, cfg=None) -> bool:
    """Does stage `name` declare params key `key` (itself or its section), with config `cfg`?"""
    return any(key == p or key.startswith(p + ".") for p in spec(name).params_for(cfg))


def producer(output: str) -> str | None:
    """The stage whose outputs include the Paths property `output`."""
    return next((s for s in SUBJECT_STAGES if output in spec(s).outs + spec(s).metrics), None)


def reached(overrides: dict, cfg=None) -> dict[str, dict]:
    """Per subject stage, the overrides that change its outputs: those it reads and those of the stages it reads from.

    What a stage reads is judged under the overridden config (a row with `train.method: dreambooth` makes
    `class_prior` read the class-image keys too).
    """
    variant = _overridden(cfg, overrides)
    out: dict[str, dict] = {}
    for name in SUBJECT_STAGES:
        mine = {k: v for k, v in overrides.items() if reads(name, k, variant)}
        for dep in spec(name).deps:
            up = producer(dep)
            if up:
                mine.update(out[up])
        out[name] = dict(sorted(mine.items()))
    return out


def _overridden(cfg, overrides: dict):
    if cfg is None or not overrides:
        return cfg
    from rpo.config import from_dict, to_dict
    from rpo.params import apply_overrides

    return from_dict(apply_overrides(to_dict(cfg), overrides))


def slug(overrides: dict) -> str:
    """A folder name that says which overrides made it: `train.beta-0.0_validate.lambda_val-0.7`."""
    return "_".join(f"{k}-{json.dumps(v)}" for k, v in sorted(overrides.items())).replace('"', "")


def variant_roots(root: Path, overrides: dict, cfg=None) -> dict[str, Path]:
    """Where each stage of an ablation's variant writes: under ablations/<slug> of the overrides that reach it,
    or the main project's own folders when none does (so a variant shares every stage it does not change)."""
    return {name: Path(root) / ABLATIONS / slug(o) if o else Path(root) for name, o in reached(overrides, cfg).items()}


def run(name: str, ctx) -> Path:
    """Run subject stage `name`: stale temporaries of killed runs removed first, a run log (wall time,
    device; not a DVC output) written after."""
    A.remove_stale_temporaries(ctx.root)
    start, compiled = time.perf_counter(), _xla_counts()
    out = module(name).run(ctx)
    seconds = round(time.perf_counter() - start, 1)
    device = _device_name(ctx)
    xla = sys.modules["rpo.xla"].since(compiled) if device.startswith("xla") else {}
    A.write_json({"stage": name, "subject": ctx.subject.name, "seconds": seconds, "device": device, **xla,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, ctx.paths.run_log(name))
    log.info("%s@%s: done in %.1f s%s", name, ctx.subject.name, seconds,
             f" ({xla['xla_compilations']} XLA graphs compiled in {xla['xla_compile_seconds']} s)" if xla else "")
    record_imports(name, ctx.root)
    return out


def record_imports(stage: str, root: Path) -> None:
    """With RPO_IMPORTS_LOG set (the tests do), append the project files this run has imported: the test
    that dvc.yaml declares every file a stage's command really loads reads them."""
    target = os.environ.get("RPO_IMPORTS_LOG")
    if not target:
        return
    root = Path(root).resolve()
    paths = {Path(m.__file__) for m in list(sys.modules.values()) if isinstance(getattr(m, "__file__", None), str)}
    files = sorted(p.resolve().relative_to(root).as_posix() for p in paths
                   if p.is_absolute() and p.resolve().is_relative_to(root))
    with open(target, "a") as f:
        f.write(json.dumps({"stage": stage, "files": files}) + "\n")


def _xla_counts() -> dict:
    """torch_xla's totals so far, if a stage of this process has loaded it (light stages never import torch)."""
    xla = sys.modules.get("rpo.xla")
    return xla.counts() if xla else {}


def _device_name(ctx) -> str:
    """The device a model stage ran on; "none" for the light stages, which never load torch (nor rpo.device)."""
    device = sys.modules.get("rpo.device")
    return str(device.pick_device(ctx.cfg.device)) if device else "none"


def checked_context(args):
    """Params and the subject's photos are checked here, before torch or any model is imported.

    With `args.ablation`, the `--set` overrides place the outputs of the stages they reach under
    ablations/<overrides> and read the others' from the main pipeline (rpo.ablation).
    """
    from rpo.context import context
    from rpo.params import config_from_args, overrides_from_args

    cfg = config_from_args(args)
    ctx = context(Path.cwd(), cfg, args.subject)
    if getattr(args, "ablation", False):
        from rpo.params import load_config

        main = load_config(args.params)  # the project's own config: which stages read what
        roots = variant_roots(ctx.root, overrides_from_args(args), main)
        ctx = ctx.with_paths(A.Paths(ctx.root, ctx.subject.name, roots))
    return ctx


def cli_stage(args) -> None:
    if spec(args.name).per_subject:
        if args.subject is None:
            from rpo.params import ParamsError

            raise ParamsError(f"stage {args.name}: --subject is required")
        run(args.name, checked_context(args))
    else:
        from rpo.params import config_from_args

        module(args.name).run(Path.cwd(), config_from_args(args))
        record_imports(args.name, Path.cwd())


def cli_run(args) -> None:
    """Every subject stage for one subject, in order, in this process (no DVC cache)."""
    ctx = checked_context(args)
    module("check").check_all(ctx.root, ctx.cfg)
    for name in SUBJECT_STAGES[1:]:
        log.info("== stage %s for %s ==", name, ctx.subject.name)
        run(name, ctx)
