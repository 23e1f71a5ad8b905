"""One thin Prefect task per pipeline stage: run, or restore from the DVC remote, its DVC stage in the run's workspace.

Stages that run a diffusion or encoder model carry the `gpu` tag, so a tag concurrency
limit (`prefect concurrency-limit create gpu N`) caps the GPU stages running on the whole
server; on each machine, one worker per GPU with `--limit 1` keeps one GPU stage per GPU
(README, "Running on a Prefect server"). Prefect's task cache stays off: DVC alone decides
what is recomputed, from content hashes.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from rpo.stages import SUBJECT_STAGES as STAGES
from tasks import dvc
from tasks.workspace import retry_unless_bad_input

GPU = "gpu"
_OPTIONS = {"task_run_name": "{stage}", "cache_policy": NO_CACHE, "retry_condition_fn": retry_unless_bad_input}


def run_stage(workspace: Path, stage: str) -> dict:
    """`stage` as DVC names it (`finetune@dog`, `report`); its status says whether it was computed or restored."""
    start = time.perf_counter()
    status = dvc.reproduce(Path(workspace), stage, get_run_logger())
    return {"stage": stage, "status": status, "seconds": round(time.perf_counter() - start, 1)}


@task(name="check", **_OPTIONS)
def check(workspace: Path, stage: str = "check") -> dict:
    """params.yaml and the run's subjects, before any stage loads a model (every subject stage depends on it)."""
    return run_stage(workspace, stage)


@task(name="prior", tags=[GPU], **_OPTIONS)
def prior(workspace: Path, stage: str) -> dict:
    return run_stage(workspace, stage)


@task(name="class_prior", tags=[GPU], **_OPTIONS)
def class_prior(workspace: Path, stage: str) -> dict:
    """DreamBooth's class images (an empty manifest, no model, unless train.method uses prior preservation)."""
    return run_stage(workspace, stage)


@task(name="score", tags=[GPU], **_OPTIONS)
def score(workspace: Path, stage: str) -> dict:
    return run_stage(workspace, stage)


@task(name="labels", **_OPTIONS)
def labels(workspace: Path, stage: str) -> dict:
    return run_stage(workspace, stage)


@task(name="finetune", tags=[GPU], **_OPTIONS)
def finetune(workspace: Path, stage: str) -> dict:
    return run_stage(workspace, stage)


@task(name="select", **_OPTIONS)
def select(workspace: Path, stage: str) -> dict:
    return run_stage(workspace, stage)


@task(name="evaluate", tags=[GPU], **_OPTIONS)
def evaluate(workspace: Path, stage: str) -> dict:
    return run_stage(workspace, stage)


@task(name="report", **_OPTIONS)
def report(workspace: Path, stage: str = "report") -> dict:
    """The report over the workspace's `subjects`: summary, and per subject its image grid and validation curve."""
    return run_stage(workspace, stage)


@task(name="checkout", cache_policy=NO_CACHE, retry_condition_fn=retry_unless_bad_input)
def checkout(workspace: Path, locked: list[dict]) -> None:
    """Fetch stages locked in other workspaces (dvc.lock entries) from the remote: their outputs only."""
    dvc.merge_lock(Path(workspace), locked)
    dvc.dvc(Path(workspace), "pull", *(e["stage"] for e in locked), log=get_run_logger())


SUBJECT_STAGES = tuple({t.name: t for t in (prior, class_prior, score, labels, finetune, select, evaluate)}[s]
                       for s in STAGES[1:])
