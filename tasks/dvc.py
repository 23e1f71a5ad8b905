"""DVC is the build system of a run: reproduce one stage in a workspace, restore it from the remote, share it.

`dvc repro --pull` first pulls the remote's run-cache (stage hashes of every run pushed so
far, from any machine): a stage whose command, dependencies and params match an entry is
checked out from the remote instead of being run. After each stage, `dvc push --run-cache`
sends its outputs and run-cache entry to the remote, so other workers can restore it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from rpo.artifacts import atomic_file
from tasks import process

CACHED = "is cached - skipping run"  # DVC's words for a run-cache hit: restored, not recomputed
UNCHANGED = "didn't change, skipping"  # the workspace's dvc.lock already matches
CACHE_TYPES = "reflink,hardlink,copy"  # workspaces link into the machine's cache instead of copying checkpoints
# DVC's advice to a person at a terminal (git add dvc.lock, dvc push): the flow does its part, the log skips it
ADVICE = re.compile(r"^(To track the changes with git|git add |To enable auto staging|dvc config core\.autostage|Use `dvc push`)")


def dvc(workspace: Path, *args: str, log=None) -> str:
    return process.run([sys.executable, "-m", "dvc", *args], workspace, log, skip=ADVICE)


def has_default_remote(workspace: Path) -> bool:
    try:
        dvc(workspace, "remote", "default")
    except process.CommandError:
        return False
    return True


def configure(workspace: Path, remote: str | None, cache_dir: Path, log) -> None:
    """Workspace-local settings (.dvc/config.local, never committed): the remote and this machine's cache."""
    if remote:
        dvc(workspace, "remote", "add", "--local", "--default", "--force", "rpo", remote, log=log)
    dvc(workspace, "cache", "dir", "--local", str(cache_dir), log=log)
    dvc(workspace, "config", "--local", "cache.type", CACHE_TYPES, log=log)


def reproduce(workspace: Path, target: str, log) -> str:
    """Run or restore one stage (`prior@dog`), then push it; return computed, restored or unchanged."""
    out = dvc(workspace, "repro", "--single-item", "--pull", target, log=log)
    status = "restored" if CACHED in out else "unchanged" if UNCHANGED in out else "computed"
    dvc(workspace, "push", "--run-cache", target, log=log)
    return status


def lock_entries(workspace: Path, subject: str) -> list[dict]:
    """This subject's stages in the workspace's dvc.lock: command, params used, hashes of deps and outputs."""
    stages = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    return [{"stage": name, **entry} for name, entry in stages.items() if name.endswith(f"@{subject}")]


def merge_lock(workspace: Path, entries: list[dict]) -> None:
    """Add stages locked in other workspaces to this one's dvc.lock, as merging their dvc.lock in git would.

    `dvc pull STAGE` then fetches exactly those outputs (no upstream stage, no checkpoint) from the remote.
    """
    path = workspace / "dvc.lock"
    lock = yaml.safe_load(path.read_text()) if path.exists() else {"schema": "2.0", "stages": {}}
    lock["stages"].update({e["stage"]: {k: v for k, v in e.items() if k != "stage"} for e in entries})
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(lock, sort_keys=False))
