"""The paper's ablations (Table 2: the two terms of RPO; Table 3: lambda_val) as a DVC pipeline beside the main one.

An ablation row is a (training run, selection rule) pair. Two training runs per subject
cover both tables: `rpo`, the main pipeline's own finetune (L_sim + L_pref at train.beta),
and `lsim` (beta = 0, pure L_sim). Every other difference is a selection rule (early
stopping at a lambda_val, or the last step) applied to recorded validation scores, so a
row costs one select and one evaluate. The row with the main pipeline's own settings is
the main pipeline's result. Names: `<training>-<es|last><100 lambda_val>`, e.g. rpo-es50.

`rpo ablate` writes ablations/dvc.yaml from dvc.yaml's own stage definitions (outputs moved
under ablations/<name>/, overridden params dropped from the declared ones, `--variant` added
to the command) and runs `dvc repro ablations/dvc.yaml`. DVC runs what is missing and skips
what the main pipeline already has, so each training runs once per subject, and its
dvc.lock records which training every row selected from. The file is written on demand,
not kept in the repository: stages the user never asked for would show in `dvc status`.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from rpo import artifacts as A
from rpo import params as P

ABLATIONS = "ablations"
TRAININGS = {"rpo": {}, "lsim": {"train.beta": 0.0}}  # overrides of each training run
SELECTION_KEYS = ("validate.lambda_val", "validate.early_stopping", "evaluate.base_images")
TABLES = (2, 3)
_NAME = re.compile(r"^(rpo|lsim)-(es|last)(\d{2,3})$")


@dataclass(frozen=True)
class Variant:
    training: str  # rpo (L_sim + L_pref) or lsim (beta = 0)
    early_stopping: bool  # best validation step at lambda_val, or the last step
    lambda_val: float  # selection's lambda, and the lambda of the reported reward

    @property
    def name(self) -> str:
        return f"{self.training}-{'es' if self.early_stopping else 'last'}{round(self.lambda_val * 100):02d}"

    @classmethod
    def parse(cls, name: str) -> Variant:
        m = _NAME.match(name)
        if not m:
            raise P.ParamsError(f"variant {name!r}: expected <rpo|lsim>-<es|last><100 x lambda_val>, "
                                "e.g. rpo-es50, lsim-last30")
        return cls(m[1], m[2] == "es", int(m[3]) / 100)

    def overrides(self) -> dict:
        # no base-model images: they do not depend on the variant and the main evaluation has them
        return {**TRAININGS[self.training], "validate.lambda_val": self.lambda_val,
                "validate.early_stopping": self.early_stopping, "evaluate.base_images": False}


def table2(params: dict) -> list[tuple[str, Variant]]:
    lam = params["ablate"]["lambda_val"]
    return [("pure L_sim (beta = 0)", Variant("lsim", False, lam)),
            ("L_pref without early stopping", Variant("rpo", False, lam)),
            ("early stopping without L_pref", Variant("lsim", True, lam)),
            ("full RPO", Variant("rpo", True, lam))]


def table3(params: dict) -> list[tuple[str, Variant]]:
    return [(f"lambda_val = {lam:g}", Variant("rpo", True, lam)) for lam in params["ablate"]["lambda_vals"]]


def rows(params: dict, tables=TABLES) -> dict[int, list[tuple[str, Variant]]]:
    """Each requested table's rows, after checking the params they come from."""
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise P.ParamsError(f"tables {unknown}: the ablations are tables {', '.join(map(str, TABLES))}")
    if params["train"]["beta"] == 0:
        raise P.ParamsError("train.beta: 0 makes the main training pure L_sim; the ablations compare it with L_pref")
    for key, values in (("ablate.lambda_val", [params["ablate"]["lambda_val"]]),
                        ("ablate.lambda_vals", params["ablate"]["lambda_vals"])):
        off = [v for v in values if abs(v * 100 - round(v * 100)) > 1e-9]
        if off:
            raise P.ParamsError(f"{key}: {off} not on the 0.01 grid (variant names and validate.keep use it)")
    return {t: {2: table2, 3: table3}[t](params) for t in tables}


def variants(params: dict, tables=TABLES) -> list[Variant]:
    return list(dict.fromkeys(v for entries in rows(params, tables).values() for _, v in entries))


def main_variant(params: dict) -> Variant:
    """The row the main pipeline computes itself."""
    return Variant("rpo", params["validate"]["early_stopping"], params["validate"]["lambda_val"])


# --- where a variant's artifacts live ---------------------------------------------------


@dataclass(frozen=True)
class VariantPaths(A.Paths):
    """A variant's own outputs under ablations/<name>/; the prior and labels of the main
    pipeline; the checkpoints and validation records of its training run."""

    main: A.Paths
    training: A.Paths

    prior_dir = property(lambda self: self.main.prior_dir)
    rewards = property(lambda self: self.main.rewards)
    labels = property(lambda self: self.main.labels)
    checkpoints = property(lambda self: self.training.checkpoints)
    validation = property(lambda self: self.training.validation)
    train_log = property(lambda self: self.training.train_log)


def _root(root: Path, name: str) -> Path:
    return Path(root) if name == "rpo" else Path(root) / ABLATIONS / name


def paths(root: Path, subject: str, name: str) -> VariantPaths:
    """Paths of a training run (`lsim`) or of a variant (`rpo-es50`)."""
    training = A.Paths(_root(root, name.split("-")[0]), subject)
    return VariantPaths(_root(root, name), subject, main=A.Paths(root, subject), training=training)


def metrics_path(root: Path, subject: str, variant: Variant, params: dict) -> Path:
    if variant == main_variant(params):
        return A.Paths(root, subject).metrics
    return paths(root, subject, variant.name).metrics


def context(root: Path, params: dict, subject: str, name: str, stage: str):
    """A stage's Context for an ablation: params overridden, outputs under ablations/<name>/."""
    from rpo.context import context as stage_context

    if stage == "finetune":
        if name not in TRAININGS or name == "rpo":
            raise P.ParamsError(f"--variant {name}: finetune trains only 'lsim' (the 'rpo' run is the main finetune)")
        overrides = TRAININGS[name]
    elif stage in ("select", "evaluate"):
        overrides = Variant.parse(name).overrides()
    else:
        raise P.ParamsError(f"--variant: ablations share the main pipeline's {stage} stage")
    ctx = stage_context(root, P.apply_overrides(params, overrides), subject)
    return dataclasses.replace(ctx, paths=paths(ctx.root, subject, name))


# --- the DVC pipeline ---------------------------------------------------------------------


def _prefix(name: str) -> str:
    return "" if name == "rpo" else f"{ABLATIONS}/{name}/"


def _path_of(entry) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def _outputs(do: dict) -> list[str]:
    return [_path_of(e) for k in ("outs", "metrics", "plots") for e in do.get(k, [])]


def _declared_params(entries: list, dropped: set[str]) -> list:
    """Params of a main stage less the overridden ones; a section holding one is expanded into its other keys."""
    out = []
    for e in entries:
        if not isinstance(e, str) or not any(k == e or k.startswith(e + ".") for k in dropped):
            out.append(e)
        elif e not in dropped:
            out += [k for k in P.SPEC if k.startswith(e + ".") and k not in dropped]
    return out


def _moved(main: dict, stage: str, name: str, prefixes: dict[str, str], dropped: set[str]) -> dict:
    """The main stage `stage` for variant `name`: outputs of stages in `prefixes` move under their prefix."""
    owner = {path: s for s in prefixes for path in _outputs(main[s]["do"])}

    def move(entry):
        path = _path_of(entry)
        moved = prefixes[owner[path]] + path if path in owner else path
        return moved if isinstance(entry, str) else {moved: entry[path]}

    do = main[stage]["do"]
    stage_def = {"wdir": "..", "cmd": f"{do['cmd']} --variant {name}", "deps": [move(d) for d in do.get("deps", [])],
                 "params": _declared_params(do.get("params", []), dropped)}
    return {**stage_def, **{k: [move(e) for e in do[k]] for k in ("outs", "metrics", "plots") if k in do}}


def pipeline(main: dict, params: dict, subjects: list[str], tables=TABLES) -> dict:
    """ablations/dvc.yaml for `subjects`: one extra training per subject, select + evaluate per variant, the report."""
    shared = main_variant(params)
    plan = [v for v in variants(params, tables) if v != shared]
    stages = {}
    for training in sorted({v.training for v in plan} - {"rpo"}):
        do = _moved(main, "finetune", training, {"finetune": _prefix(training)}, set(TRAININGS[training]))
        stages[f"finetune-{training}"] = {"foreach": subjects, "do": do}
    for v in plan:
        prefixes = {"finetune": _prefix(v.training), "select": _prefix(v.name), "evaluate": _prefix(v.name)}
        for stage in ("select", "evaluate"):
            do = _moved(main, stage, v.name, prefixes, set(SELECTION_KEYS))
            stages[f"{stage}-{v.name}"] = {"foreach": subjects, "do": do}
    metrics = [metrics_path(Path("."), s, v, params).as_posix() for v in variants(params, tables) for s in subjects]
    stages["report"] = {
        "wdir": "..",
        "cmd": f"rpo report --ablations --tables {' '.join(map(str, tables))} --subjects {' '.join(subjects)}",
        "deps": metrics + ["rpo/report.py", "rpo/ablation.py"],
        "params": ["ablate", "train.beta", "validate.lambda_val", "validate.early_stopping"],
        "outs": ["reports/ablations.md"], "metrics": ["reports/ablations.json"],
    }
    return {"stages": stages}


class _PlainDumper(yaml.SafeDumper):
    """Repeats shared lists in full: a reader of ablations/dvc.yaml should not meet YAML anchors."""

    def ignore_aliases(self, data):
        return True


def write(root: Path, params: dict, subjects: list[str], tables=TABLES) -> Path:
    """Check the request, then write ablations/dvc.yaml (atomically) and return its path."""
    from rpo.subjects import load_subject

    root = Path(root)
    outside = [s for s in subjects if s not in params["subjects"]]
    if outside:
        raise P.ParamsError(f"subjects {outside} are not in params.yaml `subjects`: "
                            "the ablations reuse their main pipeline")
    for s in subjects:
        load_subject(root / params["paths"]["subjects"], s, check_images=False)
    main = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    header = (f"# Written by `rpo ablate` from dvc.yaml and params.yaml (ablate.*); edit those, not this file.\n"
              f"# Tables {', '.join(map(str, tables))} for {len(subjects)} subjects; see rpo/ablation.py.\n")
    path = root / ABLATIONS / "dvc.yaml"
    with A.atomic_file(path) as tmp:
        tmp.write_text(header + yaml.dump(pipeline(main, params, subjects, tables), Dumper=_PlainDumper,
                                          sort_keys=False, width=120))
    return path


def run(root: Path, params: dict, subjects: list[str], tables=TABLES) -> int:
    """`dvc repro ablations/dvc.yaml`: reproduces the main stages it needs, then every row; DVC's exit code."""
    path = write(root, params, subjects, tables)
    cmd = [sys.executable, "-m", "dvc", "repro", path.relative_to(Path(root)).as_posix()]
    return subprocess.run(cmd, cwd=root).returncode
