"""A run's workspace: a git clone of the project with the run's own params.yaml, wired to the DVC remote.

`dvc repro` locks its workspace, so every flow run gets its own clone under RPO_WORKSPACES
(one folder per machine or worker). Outputs are shared between workspaces and machines
through the DVC remote (run-cache included), and between the workspaces of one machine
through its DVC cache, which they all link into. Overrides go into the workspace's
params.yaml only: its dvc.lock records them and the run-cache keys on them, and no other
run sees them.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from rpo import params as P
from rpo.artifacts import atomic_dir, atomic_file
from tasks import dvc, process

PROJECT = Path(__file__).resolve().parents[1]  # the checkout this flow code was loaded from
HOME = Path.home() / ".cache" / "rpo"


def workspaces_root() -> Path:
    """This machine's (or worker's) folder for workspaces and DVC cache: RPO_WORKSPACES, a worker or job setting."""
    return Path(os.environ.get("RPO_WORKSPACES", HOME / "workspaces")).expanduser().resolve()


def retry_unless_bad_input(task, task_run, state) -> bool:
    """Prefect retry condition: retry a failure that may pass next time, never a wrong input."""
    try:
        state.result()
    except process.BadInputError:
        return False
    except Exception:  # noqa: BLE001 - any other failure may be transient (remote, OOM, preemption)
        return True
    return True


@task(name="workspace", cache_policy=NO_CACHE, retry_condition_fn=retry_unless_bad_input)
def workspace(name: str, subjects: list[str] | None = None, overrides: dict | None = None,
              source: str | None = None, remote: str | None = None, check: bool = True) -> Path:
    """Clone `source` (default: this checkout) for this flow run, apply overrides, check the subjects."""
    log = get_run_logger()
    root = workspaces_root()
    ws = root / "runs" / f"{name}-{flow_run.id}"
    if not (ws / ".git").exists():  # a retried flow run finds its workspace and goes on in it
        _clone(source or str(PROJECT), ws, log)
    remote = remote or os.environ.get("RPO_DVC_REMOTE")
    if not remote and not dvc.has_default_remote(ws):  # a remote committed in .dvc/config wins
        remote = str(HOME / "dvc-remote")
    dvc.configure(ws, remote, root / "dvc-cache", log)
    params = write_params(ws, subjects, overrides)
    if check:
        process.run([sys.executable, "-m", "rpo.cli", "check"], ws, log)
    log.info("workspace %s:%s for %s, DVC remote %s", socket.gethostname(), ws, ", ".join(params["subjects"]),
             remote or "(the project's default)")
    return ws


def write_params(ws: Path, subjects: list[str] | None, overrides: dict | None) -> dict:
    """The workspace's params.yaml with `overrides` (dotted keys) and `subjects`, validated before any work."""
    changes = {**(overrides or {}), **({"subjects": list(subjects)} if subjects else {})}
    try:
        params = P.load(ws / "params.yaml", changes)
    except P.ParamsError as e:
        raise process.BadInputError(str(e)) from e
    with atomic_file(ws / "params.yaml") as tmp:
        tmp.write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def _clone(source: str, ws: Path, log) -> None:
    if Path(source).is_dir():
        try:
            dirty = process.run(["git", "status", "--porcelain"], Path(source))
        except process.CommandError as e:
            raise process.BadInputError(f"{source}: not a git repository (a run clones the project's last commit)") from e
        if dirty:
            log.warning("%s has uncommitted changes: runs use its last commit", source)
    with atomic_dir(ws) as tmp:  # a half-made clone never looks like a workspace
        process.run(["git", "clone", "--quiet", source, str(tmp)], ws.parent, log)
    log.info("cloned %s at %s", source, process.run(["git", "rev-parse", "--short", "HEAD"], ws))
