"""The world experiment runs end to end (one subject, tiny counts) on rpo ablate's engine and report.

The end-to-end run trains RPO and one baseline (DreamBooth: the class-image path); test_baselines.py runs the
other baselines' trainings on the tiny models."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO
from rpo import ablation, presets
from rpo import params as P
from rpo_world.experiment import METHODS, TITLE, rows


def test_two_training_runs_serve_eight_rows():
    r = rows([0.3, 0.5, 0.7], [1.0])
    assert [x.label for x in r] == [
        "L_sim (beta=0), no early stopping", "L_sim (beta=0), early stopping lambda_val=0.3",
        "L_sim (beta=0), early stopping lambda_val=0.5", "L_sim (beta=0), early stopping lambda_val=0.7",
        "RPO beta=1, no early stopping", "RPO beta=1, early stopping lambda_val=0.3",
        "RPO beta=1, early stopping lambda_val=0.5", "RPO beta=1, early stopping lambda_val=0.7"]
    assert {x.training for x in r} == {(("train.beta", 0.0), ("train.method", "rpo")),
                                       (("train.beta", 1.0), ("train.method", "rpo"))}


def test_every_method_is_one_training_run_with_and_without_early_stopping():
    r = rows([0.3], [1.0, 0.1], list(METHODS))
    trainings = list(dict.fromkeys(x.training for x in r))
    assert trainings == [(("train.beta", 0.0), ("train.method", "rpo")), (("train.beta", 1.0), ("train.method", "rpo")),
                         (("train.beta", 0.1), ("train.method", "rpo")), (("train.method", "dreambooth"),),
                         (("train.method", "textual_inversion"),), (("train.method", "custom_diffusion"),)]
    assert all([x.early_stopping for x in r if x.training == t] == [False, True] for t in trainings)


def test_the_world_presets_row_is_the_main_one_the_others_are_paired_with():
    params = P.apply_overrides(P.read(REPO / "params.yaml"), presets.load("world"))
    r = rows([0.3, 0.5], [1.0, 0.1], list(METHODS))
    assert [x.label for x in r if ablation.is_main(x.settings(), params)] == \
        ["RPO beta=0.1, early stopping lambda_val=0.3"]  # train.beta 0.1, early stopping, lambda_val 0.3, rpo


RUN = ("rpo", "dreambooth")


@pytest.mark.slow
def test_experiment_reports_rpo_and_a_baseline_with_the_judges(tmp_path):
    out = tmp_path / "exp"
    cmd = [sys.executable, "-m", "rpo_world.cli", "experiment", "--quick", "--subjects", "striped_star_toy", "--seeds",
           "0", "--lambdas", "0.3", "--betas", "1", "--methods", *RUN, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "experiment.json").read_text())
    table = report["tables"][TITLE]
    tags = ["RPO beta=1", "DreamBooth (prior preservation)"]
    assert [r["row"] for r in table] == [f"{t}, {rule}" for t in tags
                                         for rule in ("no early stopping", "early stopping lambda_val=0.3")]
    runs = pd.DataFrame(report["runs"])
    for col in ("judge_subject", "judge_prompt", "judge_both", "judge_home", "dino", "clip_i", "clip_t"):
        assert runs[col].between(-1, 1).all(), col
    (base,) = report["tables"]["base model"]
    assert base["judge_subject"]["mean"] <= 0.5  # the base model cannot draw the subject
    assert (runs["selected_step"] > 0).all()
    text = (out / "experiment.md").read_text()
    assert "| DreamBooth (prior preservation), early stopping lambda_val=0.3 | 1 |" in text and "judge_subject" in text
    assert "mean abs Delta" in text  # what the preference term did in each RPO training
    dreambooth = runs[runs["row"].str.startswith(tags[1])]
    assert len(dreambooth) == 2 and dreambooth["variant"].str.contains("train.method-dreambooth").all()  # its own training
    # that a second run re-runs nothing is rpo ablate's (test_report.py), the engine this experiment runs on
