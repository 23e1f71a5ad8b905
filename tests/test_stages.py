"""Every stage on the tiny models: artifacts, their schemas, their consistency, reproducibility."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conftest import FAST, copy_project, rpo, run_stages
from rpo import artifacts as A
from rpo.dreambench import evaluation_prompts
from rpo.preference import bt_probability
from rpo.prompts import training_prompts
from rpo.reward import harmonic
from rpo.selection import select_step

SUBJECT = "duck_toy"
N_PROMPTS, N_REFS = 8, 4


def _paths(root):
    return A.Paths(root, SUBJECT)


def _read(root, path, schema):
    return A.read_table(path, schema).to_pandas()


def test_prior_images_and_manifest(pipeline_run):
    paths = _paths(pipeline_run)
    m = _read(pipeline_run, paths.prior_manifest, A.PRIOR_MANIFEST)
    per_prompt = FAST["prior.images_per_prompt"]
    assert len(m) == N_PROMPTS * per_prompt
    assert list(m.groupby("prompt_index").size()) == [per_prompt] * N_PROMPTS
    assert set(m["prompt"]) == set(training_prompts("sks", "toy", live=False))
    assert m["seed"].is_unique
    for row in m.itertuples():
        assert hashlib.sha256((pipeline_run / row.path).read_bytes()).hexdigest() == row.sha256


def test_rewards_cover_references_and_prior_images(pipeline_run):
    r = _read(pipeline_run, _paths(pipeline_run).rewards, A.REWARDS)
    ref, gen = r[r["kind"] == "ref"], r[r["kind"] == "gen"]
    assert len(ref) == N_REFS * N_PROMPTS and len(gen) == N_PROMPTS * FAST["prior.images_per_prompt"]
    assert r[["align_i", "align_t"]].apply(lambda c: c.between(0, 1).all()).all()
    assert np.allclose(r["reward"], harmonic(r["align_i"], r["align_t"], 0.0))  # lambda_train = 0: ALIGN-T
    # a reference's ALIGN-I is leave-one-out: the same for every prompt, and below 1
    assert (ref.groupby("image")["align_i"].nunique() == 1).all() and (ref["align_i"] < 1).all()


def test_labels_are_bradley_terry_draws_over_pairs(pipeline_run):
    paths = _paths(pipeline_run)
    lab = _read(pipeline_run, paths.labels, A.LABELS)
    rewards = _read(pipeline_run, paths.rewards, A.REWARDS)
    n_pairs = N_PROMPTS * FAST["prior.images_per_prompt"]
    assert len(lab) == n_pairs * FAST["labels.draws"]
    assert sorted(lab["draw"].unique()) == list(range(FAST["labels.draws"]))
    assert np.allclose(lab["p"], bt_probability(lab["r_ref"], lab["r_gen"], 1.0))
    gen = rewards[rewards["kind"] == "gen"].set_index("image")["reward"]
    assert np.allclose(lab["r_gen"], gen[lab["gen_image"]].to_numpy())
    first = lab[lab["draw"] == 0]
    assert set(first["gen_image"]) == set(gen.index) and first["pair_id"].is_unique
    assert set(lab["y"].unique()) <= {0, 1}


def test_finetune_validates_and_logs_every_loss_term(pipeline_run):
    paths = _paths(pipeline_run)
    val = _read(pipeline_run, paths.validation, A.VALIDATION)
    steps = list(range(FAST["validate.every"], FAST["train.max_steps"] + 1, FAST["validate.every"]))
    assert sorted(val["step"].unique()) == [0, *steps]  # validate.at_start: the base model first
    assert (val.groupby("step").size() == N_PROMPTS).all()
    for s in steps:
        assert (paths.checkpoints / f"step_{s:05d}" / "diffusion_pytorch_model.safetensors").exists()
    assert not (paths.checkpoints / "step_00000").exists()  # the base model is never selected: no checkpoint
    for row in val.itertuples():
        assert (pipeline_run / row.path).exists()
    log = pd.read_csv(paths.train_log)
    assert list(log["step"]) == list(range(1, FAST["train.max_steps"] + 1))
    for col in ("loss", "l_sim", "l_pref", "delta_abs", "p_dev", "label_mean", "grad_norm"):
        assert log[col].notna().all(), col
    assert np.allclose(log["loss"], log["l_sim"] + log["l_pref"], atol=1e-5)
    assert "seconds" not in log  # wall times go to the run log, never into a DVC output
    assert A.read_json(paths.run_log("finetune"))["seconds"] > 0


def test_select_picks_the_best_validation_step(pipeline_run):
    paths = _paths(pipeline_run)
    val = _read(pipeline_run, paths.validation, A.VALIDATION)
    sel = A.read_json(paths.selection)
    assert sel["step"] == select_step(val, FAST["validate.lambda_val"])
    assert (paths.selected / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        paths.checkpoints / f"step_{sel['step']:05d}" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (paths.selected / "base_model.txt").read_text().strip() == "tiny"
    curve = pd.read_csv(paths.validation_curve)
    assert list(curve.columns) == ["step", "align_i", "align_t", "reward", "selected"]
    assert curve["step"].iloc[0] == 0 and not curve["selected"].iloc[0] and sel["step"] > 0


def test_evaluate_follows_the_dreambench_protocol(pipeline_run):
    paths = _paths(pipeline_run)
    ev = _read(pipeline_run, paths.eval_dir / "images.parquet", A.EVAL_IMAGES)
    prompts = evaluation_prompts("sks", "toy", live=False)
    assert len(prompts) == 25
    per_model = 25 * FAST["evaluate.images_per_prompt"]
    assert (ev.groupby("model").size() == per_model).all() and set(ev["model"]) == {"selected", "base"}
    assert set(ev["prompt"]) == set(prompts)
    metrics, about = A.read_json(paths.metrics), A.read_json(paths.about)
    sel, base = ev[ev["model"] == "selected"], ev[ev["model"] == "base"]
    for k in ("dino", "clip_i", "clip_t", "reward"):
        assert metrics[k] == pytest.approx(sel[k].mean()) and metrics[f"base_{k}"] == pytest.approx(base[k].mean())
    assert np.allclose(sel["reward"], harmonic(sel["align_i"], sel["align_t"], FAST["validate.lambda_val"]))
    # numbers only in the DVC metric, so `dvc metrics show` stays a table; the words beside it
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
    # metric models are separate from the reward model, and the record says which were used
    assert about["models"]["clip_model"] != about["models"]["reward_model"]
    assert metrics["selected_step"] == A.read_json(paths.selection)["step"]


def test_report_summarises_the_subjects(pipeline_run):
    rpo(pipeline_run, "report")
    text = (pipeline_run / "reports" / "summary.md").read_text()
    assert f"| {SUBJECT} | toy | object |" in text
    timings = (pipeline_run / "reports" / "timings.md").read_text()
    assert f"| {SUBJECT} | " in timings and "| cpu |" in timings
    summary = A.read_json(pipeline_run / "reports" / "summary.json")
    assert summary["summary"]["all"]["n"] == 1
    assert summary["summary"]["all"]["dino"]["mean"] == pytest.approx(A.read_json(_paths(pipeline_run).metrics)["dino"])


def test_same_params_and_seeds_give_the_same_artifacts(pipeline_run, tmp_path):
    again = copy_project(tmp_path / "again", FAST)
    run_stages(again, SUBJECT, ["prior", "score", "labels"])
    first, second = _paths(pipeline_run), _paths(again)
    assert _read(again, second.prior_manifest, A.PRIOR_MANIFEST)["sha256"].tolist() == \
        _read(pipeline_run, first.prior_manifest, A.PRIOR_MANIFEST)["sha256"].tolist()
    pd.testing.assert_frame_equal(_read(again, second.labels, A.LABELS), _read(pipeline_run, first.labels, A.LABELS))


def test_v_prediction_and_open_clip_backends_run(tmp_path):
    overrides = {**FAST, "model.base": "tiny-v", "reward.backend": "open_clip", "reward.model": "tiny-open_clip",
                 "train.max_steps": 2, "validate.every": 2}
    root = copy_project(tmp_path / "v", overrides)
    ctx = run_stages(root, SUBJECT, ["prior", "score", "labels", "finetune"])
    val = A.read_table(ctx.paths.validation, A.VALIDATION).to_pandas()
    assert val["align_t"].between(0, 1).all() and sorted(val["step"].unique()) == [0, 2]
    assert np.isfinite(pd.read_csv(ctx.paths.train_log)["loss"]).all()


def test_schema_mismatch_names_the_file(tmp_path):
    path = tmp_path / "rewards.parquet"
    A.write_table([{"pair_id": 1}], pa.schema([("pair_id", pa.int32())]), path)
    with pytest.raises(A.ArtifactError, match="rewards.parquet.*missing column kind"):
        A.read_table(path, A.REWARDS)


def test_atomic_writes_leave_nothing_on_failure_and_normal_permissions_on_success(tmp_path):
    (tmp_path / ".dvc").mkdir()  # a project: temporaries go to its .rpo/tmp, never beside the output
    for target in (tmp_path / "out", tmp_path / "table.parquet"):
        with pytest.raises(RuntimeError):
            with (A.atomic_dir if target.suffix == "" else A.atomic_file)(target) as tmp:
                assert tmp.is_relative_to(tmp_path / ".rpo" / "tmp")
                (tmp / "half.png" if target.suffix == "" else tmp).write_bytes(b"half")
                raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".dvc", ".rpo"] and not any((tmp_path / ".rpo").rglob("*.tmp"))
    with A.atomic_dir(tmp_path / "out") as tmp:
        (tmp / "image.png").write_bytes(b"x")
    A.write_json({"a": 1}, tmp_path / "metrics.json")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask
