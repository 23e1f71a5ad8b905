"""The `rpo` flow: one subject through every stage, in order, each a DVC stage in this flow run's workspace.

`prefect deployment run rpo/subject -p subject=dog -p overrides='{"train.max_steps": 200}'`
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks.publish import key, publish_subject
from tasks.stages import SUBJECT_STAGES, check
from tasks.workspace import workspace


@flow(name="rpo", flow_run_name="rpo-{subject}")
def rpo(subject: str, overrides: dict[str, Any] | None = None, retries: int = 1, retry_delay_seconds: float = 30.0,
        source: str | None = None, remote: str | None = None) -> dict:
    """Fine-tune one subject and evaluate it; a stage any worker already computed with the same inputs is restored.

    Args:
        subject: a folder under data/subjects of the project (photos + subject.yaml).
        overrides: dotted params.yaml keys for this run only, e.g. {"train.max_steps": 200}.
        retries: how many times a failed stage is retried (a wrong input never is).
        retry_delay_seconds: wait before a retry.
        source: git URL or path of the project to clone (default: the checkout this flow was loaded from).
        remote: DVC remote URL shared by every worker (default: RPO_DVC_REMOTE, else the project's
            default remote, else ~/.cache/rpo/dvc-remote on this machine).
    """
    log = get_run_logger()
    retry = {"retries": retries, "retry_delay_seconds": retry_delay_seconds}
    ws = workspace.with_options(**retry)(subject, [subject], overrides, source, remote)
    progress = create_progress_artifact(0.0, key=key(subject, "progress"), description=f"{subject}: stages done")
    done = [check.with_options(**retry)(ws)]
    for i, stage_task in enumerate(SUBJECT_STAGES, 1):
        stage = f"{stage_task.name}@{subject}"
        log.info("stage %d/%d: %s", i, len(SUBJECT_STAGES), stage)
        done.append(stage_task.with_options(**retry)(ws, stage))
        log.info("stage %d/%d: %s %s in %.1f s", i, len(SUBJECT_STAGES), stage, done[-1]["status"], done[-1]["seconds"])
        update_progress_artifact(progress, 100.0 * i / len(SUBJECT_STAGES))
    return publish_subject(ws, subject, done, overrides)
