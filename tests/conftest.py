"""Shared fixtures: throw-away copies of the project, fast parameters, the `rpo` CLI as a user runs it.

Tiny models are built once into the user cache (RPO_CACHE or ~/.cache/rpo), offline, as the
product does; every test works on its own copy of the project so nothing leaks into the repo.
A copy's commands run the copy's code (PYTHONPATH), as DVC and Prefect run a workspace's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.project import REPO, SMALL, copy_project, git_init, project_files  # noqa: F401 - the tests' helpers
from rpo import params as P
from rpo import presets

DREAMBENCH = REPO.parent / "shared" / "dreambench"

# The bundled subject on the tiny models at small counts: every stage runs, in seconds,
# whatever the project's default params.yaml says.
FAST = {**presets.load("tiny"), **SMALL}

# Under pytest-xdist every worker (and the stage, DVC and Prefect processes it starts) gets one
# thread per library: two workers with a thread pool each on two cores spin against each other
# (a 4 s test took 76 s). Set before torch is first imported in this process.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

# DVC stage commands call `rpo`: make the venv's scripts visible to subprocesses.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def write_params(root: Path, overrides: dict) -> dict:
    params = P.apply_overrides(P.load(root / "params.yaml"), overrides)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def add_dreambench(root: Path, names: list[str]) -> None:
    """Import DreamBench subjects from ../shared/dreambench into the project copy, as `rpo subjects add-dreambench`."""
    from rpo.importer import add_dreambench as add

    add(DREAMBENCH, root / "data" / "subjects", names)


# the 30 DreamBench subjects (512 px, CC BY 4.0) sit beside the project in development; elsewhere the
# tests that import them are skipped, saying why
needs_dreambench = pytest.mark.skipif(not (DREAMBENCH / "prompts_and_classes.txt").exists(),
                                      reason=f"DreamBench photos not found at {DREAMBENCH}")


def run_stages(root: Path, subject: str, names=None, params: dict | None = None):
    """Stages of one subject in this process, as `rpo run` does; returns the context."""
    from rpo import stages
    from rpo.config import from_dict
    from rpo.context import context

    cfg = from_dict(params or P.load(root / "params.yaml"))
    ctx = context(root, cfg, subject)
    stages.module("check").check_all(root, cfg)
    for name in names or stages.SUBJECT_STAGES[1:]:
        stages.run(name, ctx)
    return ctx


def code_env(root: Path) -> dict:
    """The environment in which `rpo` and `dvc` commands in the project copy `root` run its own code."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "world")])}


def rpo(root: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the `rpo` CLI in `root` as a user would."""
    proc = subprocess.run([sys.executable, "-m", "rpo.cli", *args], cwd=root, capture_output=True, text=True,
                          env={**code_env(root), **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"rpo {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True,
                          env=code_env(root))
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def project(tmp_path) -> Path:
    """A fresh copy of the project with FAST parameters."""
    return copy_project(tmp_path / "project", FAST)


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> Path:
    """The bundled subject through every stage once (in-process, FAST parameters), shared by read-only tests."""
    root = copy_project(tmp_path_factory.mktemp("run") / "project", FAST)
    run_stages(root, FAST["subjects"][0])
    return root


# The longest modules first: pytest-xdist (`-n auto --dist loadfile`, see pyproject.toml) hands files
# out in collection order, so the two longest start at once on two workers and the short files fill in last.
# Order measured with `pytest --durations=0` (seconds per file, summed: 392, 377, 174, 144, 139, 103, 99).
LONGEST_FIRST = ("test_dvc.py", "test_prefect.py", "test_world_experiment.py", "test_export.py", "test_sdxl.py",
                 "test_bad_input.py", "test_report.py")


def pytest_collection_modifyitems(items):
    def rank(item):
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a module
