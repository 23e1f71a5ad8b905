"""Prefect orchestration end to end: a real server and process workers on loopback, real DVC and git, tiny models.

One server for the module; two GPU-queue workers stand for two machines (separate workspaces
and DVC caches) that share one local DVC remote, a third worker serves the batch queue.
The scenarios build on each other to stay inside the time budget: the killed run computes
duck_toy's first stages on a third machine, the user's `prefect deployment run` restores them
from the remote and completes it, and the batch then restores duck_toy whole while it computes
the other subjects.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import FAST, add_dreambench, copy_project, git_init, needs_dreambench
from bench.prefect_stack import PrefectStack

from rpo.stages import SUBJECT_STAGES

pytestmark = [pytest.mark.slow, needs_dreambench]

STAGES = SUBJECT_STAGES[1:]  # per subject; `check` runs first, for the run's subjects
BUNDLED = "duck_toy"  # the DreamBench subject bundled with the project
BATCH = [BUNDLED, "cat"]  # cat: a DreamBench subject with few, small photos; the bundled one is restored
BROKEN = "broken_toy"  # a copy of the bundled subject with one photo that is not an image
OVERRIDES = {"train.max_steps": 6}  # six steps: time to kill a worker in the middle of training


@dataclass
class Cluster:
    stack: PrefectStack
    project: Path
    remote: Path
    tmp: Path

    def run(self, deployment: str, *params: str) -> tuple[str, str]:
        """`prefect deployment run ... --watch` as a user types it; the flow run id and what the CLI printed."""
        out = self.stack.prefect("deployment", "run", deployment, *[a for p in params for a in ("-p", p)],
                                 "--watch", "--watch-interval", "2", timeout=1800, check=False)
        return re.search(r"UUID: ([0-9a-f-]{36})", out.stdout).group(1), out.stdout + out.stderr

    def workspace(self, subject: str, flow_run_id: str) -> Path:
        (ws,) = self.tmp.glob(f"machine*/runs/{subject}-{flow_run_id}")
        return ws


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefect")
    project = copy_project(tmp / "project", FAST)
    add_dreambench(project, BATCH[1:])
    broken = shutil.copytree(project / "data" / "subjects" / BUNDLED, project / "data" / "subjects" / BROKEN)
    (broken / "01.jpg").write_bytes(b"this is not a jpeg")
    git_init(project)
    stack = PrefectStack(tmp / "prefect")
    remote = tmp / "remote"
    try:
        stack.prefect("work-pool", "create", "rpo", "--type", "process")
        stack.prefect("--no-prompt", "deploy", "--all", cwd=project)
        for name in ("machine1", "machine2"):
            stack.start_worker(name, "rpo", "gpu", tmp / name, env={"RPO_DVC_REMOTE": str(remote)})
        stack.start_worker("controller", "rpo", "batch", tmp / "controller", env={"RPO_DVC_REMOTE": str(remote)})
        yield Cluster(stack, project, remote, tmp)
    finally:
        stack.close()


@contextmanager
def api(cluster: Cluster):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cluster.stack.url}), get_client(sync_client=True) as client:
        yield client


def flow_run(cluster, flow_run_id):
    with api(cluster) as client:
        return client.read_flow_run(flow_run_id)


def task_runs(cluster, flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with api(cluster) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(runs, key=lambda t: t.expected_start_time)


def logs(cluster, flow_run_id) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    out, log_filter = [], LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    with api(cluster) as client:
        while page := client.read_logs(log_filter=log_filter, limit=200, offset=len(out)):
            out += page
    return "\n".join(entry.message for entry in out)


def artifact(cluster, flow_run_id, key: str):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with api(cluster) as client:
        (found,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return found


def table(found) -> list[dict]:
    return json.loads(found.data) if isinstance(found.data, str) else found.data


def lock_outs(ws: Path, stage: str) -> dict[str, str]:
    """path -> md5 of a stage's outputs in the workspace's dvc.lock."""
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"][stage]
    return {o["path"]: o["md5"] for o in lock["outs"]}


def in_remote(remote: Path, md5: str) -> bool:
    return (remote / "files" / "md5" / md5[:2] / md5[2:]).is_file()


# --- a worker killed in the middle of a run, then one subject through the deployment ------------


@pytest.fixture(scope="module")
def killed_run(cluster):
    """The bundled subject on a third machine, killed (worker and all below it) once training wrote a checkpoint."""
    cluster.stack.start_worker("machine3", "rpo", "doomed", cluster.tmp / "machine3",
                               env={"RPO_DVC_REMOTE": str(cluster.remote)})
    with api(cluster) as client:
        deployment = client.read_deployment_by_name("rpo/subject")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"subject": BUNDLED, "overrides": OVERRIDES},
                                                     work_queue_name="doomed")
    checkpoint = cluster.tmp / "machine3" / "runs" / f"{BUNDLED}-{run.id}" / "models" / BUNDLED / "checkpoints" / "step_00002"
    deadline = time.monotonic() + 600
    while not checkpoint.exists():
        assert time.monotonic() < deadline, "the run never reached its first checkpoint"
        time.sleep(0.2)
    cluster.stack.kill_tree("machine3")
    return str(run.id)


@pytest.fixture(scope="module")
def bundled_run(cluster, killed_run):
    """`prefect deployment run rpo/subject -p subject=duck_toy` as a user types it, after the killed run."""
    return cluster.run("rpo/subject", f"subject={BUNDLED}", f"overrides={json.dumps(OVERRIDES)}")


def test_a_worker_killed_mid_run_leaves_no_half_written_artifact(cluster, killed_run):
    killed_ws = cluster.workspace(BUNDLED, killed_run)
    assert f"finetune@{BUNDLED}" not in yaml.safe_load((killed_ws / "dvc.lock").read_text())["stages"]
    model = killed_ws / "models" / BUNDLED
    assert not (model / "validation.parquet").exists()  # written last: select never sees a half-trained run
    for path in [*killed_ws.glob("data/**/*.parquet"), *model.glob("*.parquet")]:
        pq.read_table(path)
    for step in (model / "checkpoints").iterdir():
        assert step.name.startswith(".") or (step / "diffusion_pytorch_model.safetensors").stat().st_size > 0
    for obj in (cluster.remote / "files" / "md5").glob("*/[!.]*"):  # DVC uploads to .NAME.tmp, then renames
        assert hashlib.md5(obj.read_bytes()).hexdigest() == obj.parent.name + obj.name.removesuffix(".dir"), obj


def test_subject_deployment_completes_after_a_kill_and_pushes_every_stage(cluster, bundled_run):
    run_id, printed = bundled_run
    assert flow_run(cluster, run_id).state.is_completed(), printed
    tasks = {t.name: t for t in task_runs(cluster, run_id)}
    assert [n for n in tasks if "@" in n] == [f"{s}@{BUNDLED}" for s in STAGES]
    assert {n.split("@")[0] for n, t in tasks.items() if "gpu" in t.tags} == {"prior", "class_prior", "score", "finetune", "evaluate"}
    assert all(tasks[f"{s}@{BUNDLED}"].empirical_policy.retries == 1 for s in STAGES)  # the flow's `retries` default

    text = logs(cluster, run_id)
    for stage in ("prior", "score", "labels"):  # computed on machine3 before it died, restored from the remote
        assert f"Stage '{stage}@{BUNDLED}' is cached - skipping run" in text
    assert f"stage {STAGES.index('finetune') + 1}/{len(STAGES)}: finetune@{BUNDLED}" in text and f"Running stage 'finetune@{BUNDLED}'" in text
    assert "validation step 6" in text  # the stage's own progress reaches the run's log

    ws = cluster.workspace(BUNDLED, run_id)
    for stage in STAGES:
        outs = lock_outs(ws, f"{stage}@{BUNDLED}")
        assert all(in_remote(cluster.remote, md5) for md5 in outs.values()), (stage, outs)
    assert len(list((cluster.remote / "runs").glob("*/*/*"))) >= len(STAGES)  # run-cache entries, one per stage

    found = artifact(cluster, run_id, "rpo-duck-toy-metrics")
    metrics = {**json.loads((ws / "eval" / BUNDLED / "about.json").read_text()),
               **json.loads((ws / "metrics" / f"{BUNDLED}.json").read_text())}
    assert table(found)[0] == {k: metrics[k] for k in table(found)[0]} and table(found)[0]["dino"] == metrics["dino"]
    grid = re.search(r"image grid .*?: `[^:]+:([^`]+)`", found.description).group(1)
    assert Path(grid).is_file() and Path(grid).is_relative_to(ws)
    curve = table(artifact(cluster, run_id, "rpo-duck-toy-validation"))
    assert [r["step"] for r in curve] == [0, 2, 4, 6] and sum(r["selected"] for r in curve) == 1  # 0: the base model

    # the override is recorded with this run's artifacts, and the project's params.yaml is untouched
    locked = {e["stage"]: e for e in table(artifact(cluster, run_id, "rpo-duck-toy-dvc-lock"))}
    assert locked[f"finetune@{BUNDLED}"]["params"]["params.yaml"]["train.max_steps"] == OVERRIDES["train.max_steps"]
    assert yaml.safe_load((cluster.project / "params.yaml").read_text())["train"]["max_steps"] == FAST["train.max_steps"]


# --- the overnight batch ---------------------------------------------------------------------


def test_batch_runs_every_subject_restores_what_is_computed_and_reports_past_a_broken_subject(cluster, bundled_run):
    subjects = [BROKEN, *BATCH]
    batch_id, printed = cluster.run("rpo-batch/overnight", f"subjects={json.dumps(subjects)}",
                                    f"overrides={json.dumps(OVERRIDES)}")
    batch = flow_run(cluster, batch_id)
    assert batch.state.is_failed(), printed
    assert BROKEN in batch.state.message and "01.jpg: not a readable image" in batch.state.message

    rows = {r["subject"]: r for r in table(artifact(cluster, batch_id, "rpo-batch"))}
    assert set(rows) == set(subjects)
    assert rows[BROKEN]["status"] == "Failed" and "not a readable image" in rows[BROKEN]["message"]
    for subject in BATCH:
        assert rows[subject]["status"] == "Completed", rows[subject]
        assert all(isinstance(rows[subject][k], float) for k in ("dino", "clip_i", "clip_t"))
        assert rows[subject]["selected_step"] in (2, 4, 6)
    report = artifact(cluster, batch_id, "rpo-batch-report").data
    assert all(f"| {s} |" in report for s in BATCH) and f"| {BROKEN} |" not in report

    by_machine: dict[str, list] = {}
    for subject, row in rows.items():
        by_machine.setdefault(cluster.workspace(subject, row["flow_run"]).parts[-3], []).append(
            flow_run(cluster, row["flow_run"]))
    assert set(by_machine) == {"machine1", "machine2"}  # the subjects spread over both workers
    for runs in by_machine.values():  # `--limit 1`: one run, so one GPU stage, at a time per worker
        runs.sort(key=lambda r: r.start_time)
        assert all(a.end_time <= b.start_time for a, b in zip(runs, runs[1:]))

    # the bundled subject was computed by the deployment run above: this run restores every stage, trains nothing
    restored = logs(cluster, rows[BUNDLED]["flow_run"])
    assert all(f"Stage '{s}@{BUNDLED}' is cached - skipping run" in restored for s in STAGES)
    assert "> rpo " not in restored  # DVC echoes every command it runs: none ran
