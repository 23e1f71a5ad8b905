"""Wall time through the Prefect deployments on this machine: one subject, and a three-subject batch on one
worker against two. Each measurement gets a fresh DVC remote and fresh workspaces, so nothing is restored.

    uv run python -m bench.prefect_batch                   # the tiny preset at its full counts
    uv run python -m bench.prefect_batch --preset world    # the embedded default's world models
    uv run python -m bench.prefect_batch --fast            # the tests' small counts: same machinery, less time
    uv run python -m bench.prefect_batch --subject-only    # one subject only

Times are from `prefect deployment run ... --watch` starting to its return, scheduling included.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.prefect_stack import PrefectStack
from bench.project import SMALL, copy_project, git_init
from rpo import presets
from rpo.importer import add_dreambench

DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "dreambench"  # beside the project in development

BUNDLED = "duck_toy"


def timed(stack: PrefectStack, deployment: str, **params) -> float:
    args = [a for k, v in params.items() for a in ("-p", f"{k}={json.dumps(v)}")]
    start = time.perf_counter()
    out = stack.prefect("deployment", "run", deployment, *args, "--watch", "--watch-interval", "1", timeout=7200)
    seconds = time.perf_counter() - start
    if "Completed" not in out.stdout:
        raise SystemExit(f"{deployment} {params} did not complete:\n{out.stdout[-3000:]}")
    return seconds


def phase(stack: PrefectStack, tmp: Path, name: str, workers: int) -> tuple[Path, list[str]]:
    """`workers` GPU-queue workers, each its own machine (workspaces, DVC cache), and a fresh remote.

    Workers that share this machine's CPU share its cores as they would share GPUs (one each):
    two workers whose torch each starts a thread per core spin against each other, and on two
    cores the batch then ran 1.6 times slower on two workers than on one.
    """
    names = [f"{name}-w{i}" for i in range(1, workers + 1)]
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    for worker in names:
        stack.start_worker(worker, "rpo", "gpu", tmp / worker, env={"OMP_NUM_THREADS": threads})
    return tmp / f"{name}-remote", names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subjects", nargs=3, default=["red_cartoon", "cat", "dog6"], help="DreamBench subjects")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "world"], help="models and counts to run")
    parser.add_argument("--fast", action="store_true", help="the tests' FAST params (tiny models, small counts)")
    parser.add_argument("--subject-only", action="store_true", help="time one subject, no batch")
    parser.add_argument("--dreambench", default=str(DREAMBENCH), help="the DreamBench `dataset` folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rpo-prefect-bench-") as tmp:
        tmp = Path(tmp)
        project = copy_project(tmp / "project", {**presets.load("tiny"), **SMALL} if args.fast
                               else presets.load(args.preset))
        add_dreambench(Path(args.dreambench), project / "data" / "subjects", args.subjects)
        git_init(project)
        stack = PrefectStack(tmp / "prefect")
        times = {}
        try:
            stack.prefect("work-pool", "create", "rpo", "--type", "process")
            stack.prefect("--no-prompt", "deploy", "--all", cwd=project)
            stack.start_worker("controller", "rpo", "batch", tmp / "controller")
            for label, workers in (("one worker", 1), ("two workers", 2))[:1 if args.subject_only else 2]:
                remote, names = phase(stack, tmp, label.replace(" ", "-"), workers)
                if workers == 1:
                    times["one subject"] = timed(stack, "rpo/subject", subject=BUNDLED, remote=str(remote))
                if not args.subject_only:
                    times[f"batch of 3, {label}"] = timed(stack, "rpo-batch/overnight", subjects=args.subjects,
                                                         remote=str(remote))
                for worker in names:
                    stack.stop(worker)
        finally:
            stack.close()
    print(f"params: {'FAST (tests)' if args.fast else f'preset {args.preset}'}; subjects {', '.join(args.subjects)}")
    for what, seconds in times.items():
        print(f"{what:28s} {seconds:8.1f} s")
    if not args.subject_only:
        ratio = times["batch of 3, one worker"] / times["batch of 3, two workers"]
        print(f"{'batch speed-up, 2 vs 1':28s} {ratio:8.2f} x")


if __name__ == "__main__":
    main()
