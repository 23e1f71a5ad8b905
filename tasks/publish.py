"""What a run shows in Prefect: per subject its metrics, validation curve, image grid and DVC lock; per batch a summary.

Prefect image artifacts only show images at public URLs, so the subject's grid and curve,
drawn as the report draws them, stay in the run's workspace and the artifact gives their
location (host:path).
The DVC lock table (command, params used, hashes) records exactly what the run computed;
the batch flow reads it back through the Prefect API, whichever machine ran the subject,
to fetch that subject's evaluation from the DVC remote.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from uuid import UUID

from prefect import get_client, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from rpo import artifacts as A
from rpo import params as P
from tasks import dvc

SHOWN = ("subject", "class_noun", "live", "selected_step", "dino", "clip_i", "clip_t", "reward", "lambda_val")


def key(subject: str, what: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return f"rpo-{re.sub(r'[^a-z0-9]+', '-', subject.lower()).strip('-')}-{what}"


def metrics_row(workspace: Path, subject: str) -> dict:
    paths = A.Paths(Path(workspace), subject)
    record = {**A.read_json(paths.about), **A.read_json(paths.metrics)}
    return {k: record[k] for k in SHOWN}


@task(name="publish", cache_policy=NO_CACHE)
def publish_subject(workspace: Path, subject: str, stages: list[dict], overrides: dict | None) -> dict:
    ws, host = Path(workspace), socket.gethostname()
    row = metrics_row(ws, subject)
    figures = draw(ws, subject)
    description = "\n".join([
        f"**{subject}**: DINO {row['dino']:.4f}, CLIP-I {row['clip_i']:.4f}, CLIP-T {row['clip_t']:.4f}, "
        f"selected step {row['selected_step']}", "",
        f"- image grid (references, base model, selected model): `{host}:{figures['grid']}`",
        f"- validation curve: `{host}:{figures['curve']}`",
        f"- workspace (this run's params.yaml and dvc.lock): `{host}:{ws}`",
        f"- overrides: `{json.dumps(overrides or {})}`", "",
        "| stage | status | seconds |", "|---|---|---|",
        *(f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in stages)])
    create_table_artifact([row], key=key(subject, "metrics"), description=description)
    create_table_artifact(A.read_json(A.Paths(ws, subject).selection)["curve"], key=key(subject, "validation"),
                          description=f"{subject}: mean validation scores per step, reward at lambda_val "
                                      f"{row['lambda_val']}; `selected` marks the chosen checkpoint")
    create_table_artifact(dvc.lock_entries(ws, subject), key=key(subject, "dvc-lock"),
                          description=f"{subject}: this run's dvc.lock (params used, hashes of the outputs in the remote)")
    return row


def draw(ws: Path, subject: str) -> dict[str, Path]:
    """The subject's image grid and validation curve, drawn by the report's own code (no model, no GPU)."""
    from rpo.stages.report import draw as draw_subject

    out = ws / "reports"
    record = {"subject": subject, **A.read_json(A.Paths(ws, subject).metrics)}
    drawn = draw_subject(ws, P.load_config(ws / "params.yaml"), record, out / "figures", out / "curves")
    return {name: out / rel for name, rel in drawn.items()}


async def read_table(flow_run_id: UUID, artifact_key: str) -> list[dict] | None:
    """The rows of table artifact `artifact_key` of flow run `flow_run_id`, or None."""
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[artifact_key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    if not found:
        return None
    return json.loads(found[0].data) if isinstance(found[0].data, str) else found[0].data


@task(name="summary", cache_policy=NO_CACHE)
def publish_batch(rows: list[dict], report: Path | None) -> None:
    done = sum(r["status"] == "Completed" for r in rows)
    create_table_artifact(rows, key="rpo-batch", description=f"{done} of {len(rows)} subjects completed"
                          + (f"; report: `{socket.gethostname()}:{report}`" if report else ""))
    if report:
        create_markdown_artifact(report.read_text(), key="rpo-batch-report")
