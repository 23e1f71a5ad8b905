"""Real DVC on a copy of the project: one full repro, then exactly the right stages out of date after a change.

The dependencies of dvc.yaml are written from the code (rpo dvc sync); here they are held against
the modules each stage really loaded while `dvc repro` ran it, and against edits a user makes.
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import REPO, dvc, git_init, rpo, write_params
from rpo import deps
from rpo.stages import STAGES, SUBJECT_STAGES

SUBJECT = "duck_toy"
ALL_STAGES = {f"{s}@{SUBJECT}" for s in SUBJECT_STAGES[1:]} | {"check", "report"}


def _stale(root) -> set[str]:
    return set(json.loads(dvc(root, "status", "--json").stdout or "{}"))


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


def _declared(root) -> dict[str, set[str]]:
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return {name: set((body.get("do") or body)["deps"]) for name, body in stages.items()}


def test_dvc_yaml_dependencies_are_the_import_closure_of_each_stage():
    """dvc.yaml in the repository is what `rpo dvc sync` writes from the code, for every stage."""
    proc = rpo(REPO, "dvc", "sync", "--check", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    declared = _declared(REPO)
    for stage in STAGES:
        code = set(deps.stage_code(stage))
        assert {d for d in declared[stage] if d.endswith(".py")} == code, stage
        assert f"rpo/stages/{stage}.py" in code and not {f"rpo/stages/{s}.py" for s in STAGES if s != stage} & code
    # the light stages never import the model libraries' modules of the project
    for light in ("check", "labels", "select", "report"):
        assert not {"rpo/train.py", "rpo/generate.py", "rpo/encoders.py"} & declared[light], light


def test_a_stage_declares_a_plugin_only_where_it_uses_it():
    declared = _declared(REPO)
    judging = "world/rpo_world/judging.py"
    assert judging in declared["evaluate"] and "world/rpo_world/weights/world-judges" in declared["evaluate"]
    assert not any(judging in d for s, d in declared.items() if s != "evaluate")
    assert "world/rpo_world/weights/world" in declared["prior"]  # the base model's folder: data the stage reads


@pytest.fixture(scope="module")
def repro_project(tmp_path_factory):
    from conftest import FAST, code_env, copy_project

    root = copy_project(tmp_path_factory.mktemp("dvc") / "project", FAST)
    git_init(root)
    log = root.parent / "imports.jsonl"
    import os
    import subprocess
    import sys

    env = {**code_env(root), "RPO_IMPORTS_LOG": str(log)}
    first = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    LOCKS["clean"] = _outputs(root)
    return root, first.stdout, [json.loads(line) for line in log.read_text().splitlines()]


LOCKS: dict[str, dict] = {}  # the first, uninterrupted run's output hashes


def _outputs(root) -> dict[str, str]:
    """Every stage output's hash in dvc.lock: what two runs must agree on."""
    import yaml

    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    return {f"{name}:{o['path']}": o["md5"] for name, st in stages.items() for o in st.get("outs", [])}


@pytest.mark.slow
def test_repro_runs_every_stage_then_nothing(repro_project):
    root, first, _ = repro_project
    assert _ran(first) == ALL_STAGES
    assert (root / "metrics" / f"{SUBJECT}.json").exists() and (root / "reports" / "summary.md").exists()
    assert _stale(root) == set()
    assert not _ran(dvc(root, "repro").stdout)
    # no temporary outlives a run, nor a finished run's resume state; only the evaluation cache stays
    tmp = root / ".rpo" / "tmp"
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp") or (p.is_relative_to(tmp) and p != tmp)]
    assert not list((root / ".rpo" / "resume").glob("*"))


@pytest.mark.slow
def test_every_module_a_stage_loaded_while_it_ran_is_a_declared_dependency(repro_project):
    root, _, loaded = repro_project
    declared = _declared(root)
    assert {entry["stage"] for entry in loaded} == set(STAGES)
    for entry in loaded:
        missing = set(entry["files"]) - declared[entry["stage"]]
        assert not missing, (entry["stage"], missing)


@pytest.mark.slow
def test_touching_the_evaluation_prompts_reruns_evaluation_and_report(repro_project):
    root, _, _ = repro_project
    with open(root / "rpo" / "dreambench.py", "a") as f:
        f.write("\n# a user's edit\n")
    assert _stale(root) == {f"evaluate@{SUBJECT}", "report"}


@pytest.mark.slow
def test_touching_the_report_code_marks_only_the_report(repro_project):
    root, _, _ = repro_project
    dvc(root, "repro")
    with open(root / "rpo" / "stages" / "report.py", "a") as f:
        f.write("\n# a user's edit\n")
    assert _stale(root) == {"report"}


@pytest.mark.slow
def test_changing_the_pair_building_code_reruns_labels_and_everything_after_it(repro_project):
    root, _, _ = repro_project
    dvc(root, "repro")
    path = root / "rpo" / "stages" / "labels.py"
    text = path.read_text()
    assert "refs[i % len(refs)]" in text
    path.write_text(text.replace("refs[i % len(refs)]", "refs[-1 - i % len(refs)]"))  # cycle the references backwards
    assert _stale(root) == {f"labels@{SUBJECT}"}
    assert _ran(dvc(root, "repro").stdout) == {f"{s}@{SUBJECT}" for s in ("labels", "finetune", "select", "evaluate")} | {"report"}


@pytest.mark.slow
def test_changing_lambda_val_reruns_only_selection_evaluation_and_report(repro_project):
    root, _, _ = repro_project
    dvc(root, "repro")
    write_params(root, {"validate.lambda_val": 0.7})
    assert _stale(root) == {f"select@{SUBJECT}", f"evaluate@{SUBJECT}", "report"}


@pytest.mark.slow
def test_a_lambda_val_that_selects_the_same_step_reuses_the_images_it_made(repro_project):
    root, _, _ = repro_project
    write_params(root, {"validate.early_stopping": False})  # the last step, whatever lambda_val says
    dvc(root, "repro")
    entries = sorted((root / ".rpo" / "cache" / "evaluate").iterdir())
    metrics = json.loads((root / "metrics" / f"{SUBJECT}.json").read_text())
    write_params(root, {"validate.lambda_val": 0.9})
    proc = dvc(root, "repro")
    out = proc.stdout + proc.stderr
    assert f"Running stage 'evaluate@{SUBJECT}'" in out and "only lambda_val's reward is recomputed" in out
    assert sorted((root / ".rpo" / "cache" / "evaluate").iterdir()) == entries  # no image was generated
    again = json.loads((root / "metrics" / f"{SUBJECT}.json").read_text())
    assert again["dino"] == metrics["dino"] and again["selected_step"] == metrics["selected_step"] == 4
    assert again["lambda_val"] == 0.9 and again["reward"] != metrics["reward"]


@pytest.mark.slow
def test_changing_a_reward_key_reruns_scoring_and_what_follows_never_prior(repro_project):
    root, _, _ = repro_project
    write_params(root, {"reward.lambda_train": 0.5})
    stale = _stale(root)
    assert f"score@{SUBJECT}" in stale and f"prior@{SUBJECT}" not in stale
    ran = _ran(dvc(root, "repro", f"labels@{SUBJECT}").stdout)
    assert {f"score@{SUBJECT}", f"labels@{SUBJECT}"} <= ran and f"prior@{SUBJECT}" not in ran
    assert f"finetune@{SUBJECT}" in _stale(root)


# --- kill -9 anywhere, another clone at another path -------------------------------------------


def _start(root):
    import os
    import subprocess
    import sys

    from conftest import code_env

    log = open(root.parent / f"repro-{len(list(root.parent.glob('repro-*')))}.log", "w")
    return subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=root, env=code_env(root), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True), log.name


def _kill_when(proc, ready, timeout=600):
    """SIGKILL the whole `dvc repro` (DVC and the stage it runs) the moment `ready()` holds."""
    import os
    import signal
    import time

    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before the point to kill it at"
        assert time.time() < deadline, "the point to kill at never came"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _temporaries(root, marker):
    return [p for p in (root / ".rpo" / "tmp").rglob(f"*{marker}*")] if (root / ".rpo" / "tmp").exists() else []


def _running(stage):
    import psutil

    return any(f"stage {stage}" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


@pytest.mark.slow
def test_killed_anywhere_a_clone_at_another_path_ends_with_the_same_hashes(repro_project, tmp_path):
    """prior killed while it writes its images, score while it runs, finetune after a validation (it resumes),
    evaluate while it writes: each `dvc repro` after a kill goes on, and the end is the uninterrupted run's
    outputs, hash for hash, in a clone at another path, with no temporary left anywhere."""
    from conftest import FAST, copy_project

    root = copy_project(tmp_path / "another" / "place" / "project", FAST)
    git_init(root)
    paths = __import__("rpo.artifacts", fromlist=["Paths"]).Paths(root, SUBJECT)
    points = [
        ("prior", lambda: _temporaries(root, f".{SUBJECT}.")),  # its image folder, half written
        ("score", lambda: paths.prior_manifest.exists() and _running("score")),
        ("finetune", lambda: list((root / ".rpo" / "resume").glob("*/state.pt"))),  # a validation done
        ("evaluate", lambda: paths.selection.exists() and _temporaries(root, ".tmp")),
    ]
    for stage, ready in points:
        proc, log = _start(root)
        _kill_when(proc, ready)
    proc, log = _start(root)
    assert proc.wait() == 0, open(log).read()[-3000:]
    text = "".join(p.read_text() for p in sorted(root.parent.glob("repro-*.log")))
    assert "resuming duck_toy after step 2" in text  # finetune went on from its last validation, not from 0
    assert _outputs(root) == LOCKS["clean"]
    tmp = root / ".rpo" / "tmp"
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp") or (p.is_relative_to(tmp) and p != tmp)]
    assert not list((root / ".rpo" / "resume").glob("*"))
