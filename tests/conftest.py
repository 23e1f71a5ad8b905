"""Shared fixtures: throw-away copies of the project, fast parameters, the `rpo` CLI as a user runs it.

Tiny models are built once into the user cache (RPO_CACHE or ~/.cache/rpo), offline, as the
product does; every test works on its own copy of the project so nothing leaks into the repo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rpo import params as P
from rpo import presets

REPO = Path(__file__).resolve().parents[1]
DREAMBENCH = REPO.parent / "shared" / "dreambench"

# The bundled subject on the tiny models at small counts: every stage runs, in seconds,
# whatever the project's default params.yaml says.
FAST = {
    **presets.load("tiny"),
    "subjects": ["duck_toy"],
    "prior.images_per_prompt": 2,
    "prior.num_inference_steps": 2,
    "labels.draws": 4,
    "train.max_steps": 4,
    "validate.every": 2,
    "validate.num_inference_steps": 2,
    "evaluate.images_per_prompt": 1,
    "evaluate.num_inference_steps": 2,
}

# Under pytest-xdist every worker (and the stage, DVC and Prefect processes it starts) gets one
# thread per library: two workers with a thread pool each on two cores spin against each other
# (a 4 s test took 76 s). Set before torch is first imported in this process.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

# DVC stage commands call `rpo`: make the venv's scripts visible to subprocesses.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def project_files() -> list[str]:
    """Tracked files plus new files git does not ignore: what a fresh clone with this change holds."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=REPO, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (REPO / f).is_file()]


def copy_project(dest: Path, overrides: dict | None = None) -> Path:
    """A copy of the project at `dest` with `overrides` written into its params.yaml."""
    for rel in project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    if overrides:
        write_params(dest, overrides)
    return dest


def write_params(root: Path, overrides: dict) -> dict:
    params = P.apply_overrides(P.load(root / "params.yaml"), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def add_dreambench(root: Path, names: list[str]) -> None:
    """Import DreamBench subjects from ../shared/dreambench into the project copy, as `rpo subjects add-dreambench`."""
    from rpo import dreambench

    dreambench.add_subjects(DREAMBENCH, root / "data" / "subjects", names)


def dreambench_classes() -> dict[str, tuple[str, bool]]:
    """subject -> (class noun, live): the product's built-in DreamBench catalog."""
    from rpo.dreambench import CATALOG

    return {name: (e.class_noun, e.live) for name, e in CATALOG.items()}


def rpo(root: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `rpo` CLI in `root` as a user would."""
    proc = subprocess.run([sys.executable, "-m", "rpo.cli", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"rpo {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def git_init(root: Path) -> None:
    """A git repository with one commit: DVC experiments and Prefect workspaces clone from it."""
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)


@pytest.fixture
def project(tmp_path) -> Path:
    """A fresh copy of the project with FAST parameters."""
    return copy_project(tmp_path / "project", FAST)


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """The bundled subject through every stage once (in-process, FAST parameters), shared by read-only tests."""
    from rpo import stages

    root = copy_project(tmp_path_factory.mktemp("run") / "project", FAST)
    params = P.load(root / "params.yaml")
    ctx = stages.context(root, params, params["subjects"][0])
    for name in stages.STAGES:
        stages.STAGE_FUNCTIONS[name](ctx)
    return root


# The longest modules first: pytest-xdist (`-n auto --dist loadfile`, see pyproject.toml) hands files
# out in collection order, so the Prefect cluster starts at once and the short files fill the other workers.
LONGEST_FIRST = ("test_prefect.py", "test_dvc.py", "test_report.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a module
