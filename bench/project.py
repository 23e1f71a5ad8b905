"""Throw-away copies of the project, for the benchmarks and the tests: what a fresh clone of this change holds."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "world/rpo_world/weights/"  # read-only model files: linked into a copy, not copied (48 MB each)
# the bundled subject at counts that run every stage in seconds on the tiny models (the tests' FAST)
SMALL = {
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


def project_files(repo: Path = REPO) -> list[str]:
    """Tracked files plus new files git does not ignore: what a fresh clone with this change holds."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=repo, capture_output=True, check=True).stdout
    return [f for f in out.decode().split("\0") if f and (repo / f).is_file()]


def copy_project(dest: Path, overrides: dict | None = None, repo: Path = REPO) -> Path:
    """A copy of the project at `dest` with `overrides` (dotted keys) written into its params.yaml."""
    from rpo import params as P

    for rel in project_files(repo):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.startswith(WEIGHTS):
            os.link(repo / rel, target)
        else:
            shutil.copy2(repo / rel, target)
    if overrides:
        params = P.apply_overrides(P.load(dest / "params.yaml"), overrides)
        (dest / "params.yaml").write_text(P.yaml_dump(params))
    return dest


def git_init(root: Path) -> None:
    """A git repository with one commit: Prefect workspaces clone from it."""
    for cmd in (["init", "-q", "-b", "main"], ["add", "-A"],
                ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(["git", *cmd], cwd=root, check=True)
