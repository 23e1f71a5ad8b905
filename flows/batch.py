"""The `rpo-batch` flow: one `rpo/subject` run per subject, spread over every worker of the pool, then the report.

A subject that fails does not stop the others; the batch ends Failed, naming it, after the
summary is published. `prefect deployment run rpo-batch/overnight -p subjects='["dog", "cat"]'`
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import arun_deployment
from prefect.states import Failed

from rpo import params as P
from tasks.publish import key, metrics_row, publish_batch, read_table
from tasks.stages import checkout, report
from tasks.workspace import workspace, write_params


@flow(name="rpo-batch", flow_run_name="rpo-batch")
async def rpo_batch(subjects: list[str] | None = None, overrides: dict[str, Any] | None = None, retries: int = 1,
                    retry_delay_seconds: float = 30.0, source: str | None = None, remote: str | None = None,
                    deployment: str = "rpo/subject") -> list[dict]:
    """Run `deployment` for every subject (default: `subjects` of params.yaml), then report over those that completed.

    Args:
        subjects: subject names; default: the `subjects` list of the project's params.yaml.
        overrides, retries, retry_delay_seconds, source, remote: passed to every subject run (see `rpo`).
        deployment: the one-subject deployment to start.
    """
    log = get_run_logger()
    ws = workspace(name="batch", subjects=subjects, overrides=overrides, source=source, remote=remote, check=False)
    names = P.load(ws / "params.yaml")["subjects"]
    shared = {"overrides": {k: v for k, v in (overrides or {}).items() if k != "subjects"} or None, "retries": retries,
              "retry_delay_seconds": retry_delay_seconds, "source": source, "remote": remote}
    log.info("starting %d runs of %s: %s", len(names), deployment, ", ".join(names))
    runs = await asyncio.gather(*(arun_deployment(deployment, parameters={"subject": s, **shared}, timeout=None,
                                                  flow_run_name=f"rpo-{s}") for s in names))
    done = {s: run for s, run in zip(names, runs) if run.state.is_completed()}
    summary = await _report(ws, done) if done else None
    rows = [_row(s, run, metrics_row(ws, s) if s in done else None) for s, run in zip(names, runs)]
    publish_batch(rows, summary)
    failed = [r for r in rows if r["status"] != "Completed"]
    if failed:
        return Failed(message=f"{len(failed)} of {len(rows)} subjects failed: "
                              + "; ".join(f"{r['subject']}: {r['message']}" for r in failed))
    return rows


async def _report(ws: Path, done: dict[str, FlowRun]) -> Path:
    """The `report` stage over the completed subjects, their evaluations fetched from the DVC remote."""
    locked = [entry for s, run in done.items() for entry in await read_table(run.id, key(s, "dvc-lock")) or []
              if entry["stage"] == f"evaluate@{s}"]
    write_params(ws, list(done), None)
    checkout(ws, locked)
    report(ws)
    return ws / "reports" / "summary.md"


def _row(subject: str, run: FlowRun, metrics: dict | None) -> dict:
    m = metrics or {}
    return {"subject": subject, "status": run.state.name, "duration_s": round(run.total_run_time.total_seconds(), 1),
            "dino": m.get("dino"), "clip_i": m.get("clip_i"), "clip_t": m.get("clip_t"),
            "selected_step": m.get("selected_step"), "message": "" if metrics else (run.state.message or ""),
            "flow_run": str(run.id)}
