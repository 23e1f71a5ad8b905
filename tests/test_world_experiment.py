"""The world experiment runs end to end (one subject, tiny counts) through the product's own stages."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rpo import params as P
from rpo import report as product_report
from rpo.world.experiment import arms, experiment


def test_arms_share_training_runs():
    a = arms([0.3, 0.5, 0.7], [1.0])
    assert [x["arm"] for x in a] == [
        "L_sim (beta=0), no early stopping", "L_sim (beta=0), early stopping lambda_val=0.3",
        "L_sim (beta=0), early stopping lambda_val=0.5", "L_sim (beta=0), early stopping lambda_val=0.7",
        "RPO beta=1, no early stopping", "RPO beta=1, early stopping lambda_val=0.3",
        "RPO beta=1, early stopping lambda_val=0.5", "RPO beta=1, early stopping lambda_val=0.7"]
    assert sorted({x["beta"] for x in a}) == [0.0, 1.0]  # two training runs serve eight arms


@pytest.mark.slow
def test_experiment_reports_every_arm_with_judges(tmp_path):
    md = experiment(tmp_path, ["striped_star_toy"], [0], [0.3], [1.0], quick=True)
    report = json.loads((tmp_path / "experiment.json").read_text())
    runs = pd.DataFrame(report["runs"])
    assert list(runs["arm"]) == ["base", "L_sim (beta=0), no early stopping", "L_sim (beta=0), early stopping lambda_val=0.3",
                                 "RPO beta=1, no early stopping", "RPO beta=1, early stopping lambda_val=0.3"]
    for col in ("judge_subject", "judge_prompt", "judge_context", "dino", "clip_i", "clip_t"):
        assert runs[col].between(-1, 1).all(), col
    assert runs.loc[runs["arm"] == "base", "judge_subject"].item() <= 0.5  # the base model cannot draw the subject
    assert (runs.loc[runs["arm"] != "base", "step"] > 0).all()
    text = md.read_text()
    assert "| RPO beta=1, early stopping lambda_val=0.3 | 1 |" in text and "judge_subject" in text
    assert (tmp_path / "runs" / "striped_star_toy_seed0" / "eval" / "striped_star_toy" / "judges.parquet").exists()

    # the product's report on that run shows the judges' rates beside the metrics
    run = tmp_path / "runs" / "striped_star_toy_seed0"
    metrics = json.loads((run / "metrics" / "striped_star_toy.json").read_text())
    params = P.apply_overrides(json.loads((run / "rows.json").read_text())["params"],
                               {"subjects": ["striped_star_toy"], "validate.lambda_val": metrics["lambda_val"]})
    shown = product_report.report(run, params).read_text()
    rates = " | ".join(f"{metrics[k]:.2f}" for k in ("judge_subject", "judge_mark", "judge_prompt", "judge_both"))
    assert f"| striped_star_toy | selected | {rates} |" in shown

    # a second process sharing the folder finished another subject: rerunning reuses this subject's
    # run (nothing retrains) and the report takes in the other one's rows too
    other = tmp_path / "runs" / "dotted_cross_toy_seed0"
    other.mkdir()
    stored = json.loads((run / "rows.json").read_text())
    stored["rows"] = [{**r, "subject": "dotted_cross_toy"} for r in stored["rows"]]
    (other / "rows.json").write_text(json.dumps(stored))
    before = (run / "rows.json").stat().st_mtime_ns
    experiment(tmp_path, ["striped_star_toy"], [0], [0.3], [1.0], quick=True)
    report = json.loads((tmp_path / "experiment.json").read_text())
    assert sorted({r["subject"] for r in report["runs"]}) == ["dotted_cross_toy", "striped_star_toy"]
    assert report["settings"]["subjects"] == ["dotted_cross_toy", "striped_star_toy"]
    assert (run / "rows.json").stat().st_mtime_ns == before
