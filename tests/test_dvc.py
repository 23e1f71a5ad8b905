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
    return root, first.stdout, [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.slow
def test_repro_runs_every_stage_then_nothing(repro_project):
    root, first, _ = repro_project
    assert _ran(first) == ALL_STAGES
    assert (root / "metrics" / f"{SUBJECT}.json").exists() and (root / "reports" / "summary.md").exists()
    assert _stale(root) == set()
    assert not _ran(dvc(root, "repro").stdout)
    assert not list((root / ".rpo").rglob("*")) if (root / ".rpo").exists() else True  # no temporary outlives a run


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
def test_changing_a_reward_key_reruns_scoring_and_what_follows_never_prior(repro_project):
    root, _, _ = repro_project
    write_params(root, {"reward.lambda_train": 0.5})
    stale = _stale(root)
    assert f"score@{SUBJECT}" in stale and f"prior@{SUBJECT}" not in stale
    ran = _ran(dvc(root, "repro", f"labels@{SUBJECT}").stdout)
    assert {f"score@{SUBJECT}", f"labels@{SUBJECT}"} <= ran and f"prior@{SUBJECT}" not in ran
    assert f"finetune@{SUBJECT}" in _stale(root)
